"""Alignment data shared by SFT, reward modelling, RLHF and the ablation's SFT evaluation: JSONL
records read as each rank's share of the lines, a held-out split that is a function of each
record alone, preference pairs and prompts encoded with the chat format, the record sets they are
prepared into and streamed from (zhinao.data.prepare_records, RecordStream), right padding."""

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch

from zhinao.chat import ChatEncoder, as_messages
from zhinao.config.rlhf import RLHFParams
from zhinao.corpus import corpus_keys, jsonl_lines, lines_of_rank
from zhinao.data.token_stream import RecordStream
from zhinao.storage import ObjectStore, open_store

log = logging.getLogger(__name__)
TRAIN, EVAL = "train", "eval"
"""The record sets an alignment stage prepares: what it trains on and what it holds out."""


def input_keys(uri: str) -> tuple[ObjectStore, list[str]]:
    store = open_store(uri)
    keys = corpus_keys(store)
    if not keys:
        raise SystemExit(f"no .jsonl files under {uri}")
    return store, keys


def records_of_rank(uri: str, counts: Counter, *, rank: int, world_size: int) -> Iterator[tuple[str, int, dict]]:
    """(file key, line number, record) of this rank's share of the JSONL under `uri`; unparsable
    lines are counted (`unparsable`) and skipped."""
    store, keys = input_keys(uri)
    for key, number, line in lines_of_rank(store, keys, rank=rank, world_size=world_size):
        counts["records_in"] += 1
        try:
            record = json.loads(line)
        except ValueError:
            counts["unparsable"] += 1
            continue
        yield key, number, record


def held_out(key: str, number: int, *, seed: int, fraction: float) -> bool:
    """Whether line `number` of file `key` is held out: a seeded hash of its place, so the split
    needs no global view and is the same at any world size."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\0{key}\0{number}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def steps_for(n_items: int, params, world_size: int) -> int:
    per_step = params.micro_batch_size * params.grad_accum_steps * world_size
    if getattr(params, "max_steps", None):
        return params.max_steps
    return max(1, int(np.ceil(params.epochs * n_items / per_step)))


def refuse_epochs_at_another_world_size(meta: dict, params, world_size: int, *, stage: str) -> None:
    """A resumed run (its loop `meta`) counted in `epochs` ends with one line when the checkpoint
    was written by another number of ranks: `steps_for` counted its steps, and the learning-rate
    schedule over them, for that world size, so this one would train on another number of samples.
    With maxSteps the steps do not depend on it (and `stream.elastic` makes the data position not)."""
    saved = meta.get("world_size", world_size)
    if saved == world_size or getattr(params, "max_steps", None):
        return
    raise SystemExit(
        f"{stage}: the checkpoint of step {meta['step']} was written by {saved} ranks and this run has "
        f"{world_size}; with epochs (no maxSteps) its number of steps and learning-rate schedule are counted for "
        f"{saved} ranks, so another world size would train on another number of samples. Resume with {saved} "
        "ranks, or start a new run (a fresh output prefix) with maxSteps and stream.elastic, which resume at "
        "any world size"
    )


# ------------------------------------------------------------------------------ preference pairs


def encode_pair(record: dict, enc: ChatEncoder, params) -> dict | None:
    """{chosen, rejected, prompt_len, margin} of a record, or None when it is malformed, too long
    (maxLen) or its two answers encode alike. `params` needs max_len and system_prompt."""
    try:
        msgs = as_messages(record["prompt"])
        prompt_len = len(enc.prompt(msgs, system=params.system_prompt))
        c = enc.completion(msgs, record["chosen"], system=params.system_prompt).input_ids
        j = enc.completion(msgs, record["rejected"], system=params.system_prompt).input_ids
    except (KeyError, TypeError, ValueError):
        return None
    if max(len(c), len(j)) > params.max_len or c == j:
        return None
    return {"chosen": c, "rejected": j, "prompt_len": prompt_len, "margin": float(record.get("margin", 0.0))}


def of_task(record: dict, params) -> bool:
    task = getattr(params, "task", None)
    return task is None or record.get("task") == task


def encode_pairs(records: list[dict], tokenizer, params) -> tuple[list[dict], int]:
    """The pairs of `records` that fit (and are of params.task, when it has one); returns (pairs, dropped)."""
    enc = ChatEncoder(tokenizer)
    pairs, dropped = [], 0
    for r in records:
        if not of_task(r, params):
            continue
        pair = encode_pair(r, enc, params)
        if pair is None:
            dropped += 1
        else:
            pairs.append(pair)
    return pairs, dropped


def pair_sets(uri: str, tokenizer, params, *, rank: int, world_size: int, eval_fraction: float):
    """`produce` for prepare_record_sets: this rank's preference pairs, split into TRAIN and EVAL."""
    enc = ChatEncoder(tokenizer)

    def produce(counts: Counter):
        for key, number, record in records_of_rank(uri, counts, rank=rank, world_size=world_size):
            if not isinstance(record, dict) or not of_task(record, params):
                continue
            pair = encode_pair(record, enc, params)
            if pair is None:
                counts["dropped"] += 1
                continue
            yield (EVAL if held_out(key, number, seed=params.seed, fraction=eval_fraction) else TRAIN), pair

    return produce


# ---------------------------------------------------------------------------------------- prompts


def encode_prompt(record: dict, enc: ChatEncoder, params: RLHFParams) -> dict | None:
    """The record with its chat-formatted prompt ids (`_ids`), or None when it has no usable
    prompt or the prompt is longer than maxPromptLen."""
    try:
        ids = enc.prompt(as_messages(record["prompt"]), system=params.system_prompt)
    except (KeyError, TypeError, ValueError):
        return None
    return {**record, "_ids": ids} if len(ids) <= params.max_prompt_len else None


def head_prompts(uri: str, enc: ChatEncoder, params: RLHFParams, limit: int) -> list[dict]:
    """The first `limit` usable prompts under `uri`, in file order (each with its `_place`: file and
    line); reads no further than that."""
    store, keys = input_keys(uri)
    out = []
    for key, number, line in jsonl_lines(store, keys):
        if len(out) >= limit:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        prompt = encode_prompt(record, enc, params) if isinstance(record, dict) else None
        if prompt is not None:
            out.append({**prompt, "_place": [key, number]})
    return out


def prompt_sets(uri: str, enc: ChatEncoder, params: RLHFParams, *, rank: int, world_size: int, skip: set):
    """`produce` for prepare_record_sets: this rank's usable prompts, except the (file, line) places
    in `skip` (the held-out prompts taken from the same input)."""

    def produce(counts: Counter):
        for key, number, record in records_of_rank(uri, counts, rank=rank, world_size=world_size):
            if (key, number) in skip:
                counts["held_out"] += 1
                continue
            prompt = encode_prompt(record, enc, params) if isinstance(record, dict) else None
            if prompt is None:
                counts["dropped"] += 1
                continue
            yield TRAIN, prompt

    return produce


# ------------------------------------------------------------------------------------- streaming


def open_stream(session, name: str, params, *, world_size: int | None = None, rank: int | None = None) -> RecordStream:
    """This rank's stream over the stage output's record set `name` (world_size=1, rank=0: the whole
    set, as an evaluation reads it on every rank)."""
    env = session.env
    try:
        return RecordStream(
            session.output,
            name,
            session.workdir / "records" / name,
            seed=params.seed,
            rank=env.rank if rank is None else rank,
            world_size=env.world_size if world_size is None else world_size,
            params=params.stream,
        )
    except ValueError as exc:
        raise SystemExit(f"{session.output.uri}: records/{name}: {exc}") from None


def whole_set(session, name: str, params, *, chunk: int) -> Iterator[list[dict]]:
    """Every record of set `name` once, `chunk` at a time (held-out evaluation; memory: one chunk)."""
    stream = open_stream(session, name, params, world_size=1, rank=0)
    try:
        left = len(stream)
        while left:
            yield stream.take(min(chunk, left))
            left -= min(chunk, left)
    finally:
        stream.close()


def pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)
