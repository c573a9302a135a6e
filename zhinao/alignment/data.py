"""Alignment data shared by SFT, reward modelling, RLHF and the ablation's SFT evaluation: JSONL
records, held-out splits, preference pairs and prompts encoded with the chat format, right padding."""

import json
import logging
import random

import numpy as np
import torch

from zhinao.chat import ChatEncoder, as_messages
from zhinao.config.rlhf import RLHFParams
from zhinao.corpus import corpus_keys, jsonl_lines
from zhinao.storage import open_store

log = logging.getLogger(__name__)


def read_jsonl(uri: str) -> list[dict]:
    """Every JSON object of the *.jsonl files under a prefix (or data-stage docs/), in key order."""
    store = open_store(uri)
    records, bad = [], 0
    keys = corpus_keys(store)
    if not keys:
        raise SystemExit(f"no .jsonl files under {uri}")
    for _key, _number, line in jsonl_lines(store, keys):
        try:
            records.append(json.loads(line))
        except ValueError:
            bad += 1
    if bad:
        log.warning("skipped %d unparsable lines in %s", bad, uri)
    return records


def split_holdout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out) by a seeded shuffle; at least one held-out item when fraction > 0."""
    if fraction <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n = max(1, int(round(len(items) * fraction)))
    held = set(order[:n])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def steps_for(n_items: int, params, world_size: int) -> int:
    per_step = params.micro_batch_size * params.grad_accum_steps * world_size
    if getattr(params, "max_steps", None):
        return params.max_steps
    return max(1, int(np.ceil(params.epochs * n_items / per_step)))


def encode_pairs(records: list[dict], tokenizer, params) -> tuple[list[dict], int]:
    """[{chosen, rejected, prompt_len, margin}] for the pairs that fit maxLen; returns (pairs, dropped).

    `params` needs max_len and system_prompt (and task, to keep one task's pairs only)."""
    enc = ChatEncoder(tokenizer)
    pairs, dropped = [], 0
    for r in records:
        task = getattr(params, "task", None)
        if task is not None and r.get("task") != task:
            continue
        try:
            msgs = as_messages(r["prompt"])
            prompt_len = len(enc.prompt(msgs, system=params.system_prompt))
            c = enc.completion(msgs, r["chosen"], system=params.system_prompt).input_ids
            j = enc.completion(msgs, r["rejected"], system=params.system_prompt).input_ids
        except (KeyError, TypeError, ValueError):
            dropped += 1
            continue
        if max(len(c), len(j)) > params.max_len or c == j:
            dropped += 1
            continue
        pairs.append({"chosen": c, "rejected": j, "prompt_len": prompt_len, "margin": float(r.get("margin", 0.0))})
    return pairs, dropped


def load_prompts(uri: str, enc: ChatEncoder, params: RLHFParams) -> list[dict]:
    out = []
    for r in read_jsonl(uri):
        ids = enc.prompt(as_messages(r["prompt"]), system=params.system_prompt)
        if len(ids) <= params.max_prompt_len:
            out.append({**r, "_ids": ids})
    return out


def pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)
