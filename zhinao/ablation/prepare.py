"""Data of an ablation: held-out topic split, one shared tokenizer, recipe/base mixing at a share.

Layout under the ablation's prep prefix (`<storage>/<ablation>/prep`):

    base/                    data-processing output over the base corpus (when base.data is set)
    tokenizer/tokenizer/     the shared tokenizer (the tokenizer stage's layout)
    valid/docs.jsonl         held-out documents of the base data (whole topics)
    valid/tokens.npy         (n, seqLen) validation sequences packed from them
    recipes/<r>/data/        the recipe's data-processing output
    recipes/<r>/train/docs/  the run's training documents: experimental + base at the share
    recipes/<r>/train/mix.json
    sft/data/, sft/prompts/  the built-in SFT evaluation data (sft_eval.py), when the spec names none
    done.json                marker written last (a finished prep is reused)

Why one tokenizer: losses are per token, so runs are comparable only if they cut text into the
same tokens; a recipe-specific tokenizer would change the loss unit. It is trained on the base
data's training topics, which every run shares and no recipe influences.
"""

import hashlib
import io
import json
import logging
import random
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from zhinao.ablation.sft_eval import write_builtin
from zhinao.artifacts import StageOutput
from zhinao.config.ablation import AblationParams, Recipe
from zhinao.config.data import DataParams
from zhinao.corpus import corpus_keys, jsonl_lines
from zhinao.data.packing import pack_source
from zhinao.distributed import DistEnv
from zhinao.storage import ObjectStore, open_store
from zhinao.tokenizer import EOD, to_transformers, train_bpe
from zhinao.tokenizer import load as load_tokenizer

log = logging.getLogger(__name__)
PREP_TOKENIZER = "tokenizer"
"""The shared tokenizer's prefix under the preparation root, laid out as a tokenizer stage's output."""


# ---- documents ---------------------------------------------------------------------------------


def read_records(store: ObjectStore) -> list[dict]:
    """Every JSON object with a non-empty `text` under the prefix (docs/ of a data-stage output first)."""
    records = []
    for _key, _number, line in jsonl_lines(store, corpus_keys(store)):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("text"), str) and rec["text"].strip():
            records.append(rec)
    return records


def write_records(store: ObjectStore, key: str, records: list[dict]) -> None:
    store.put_bytes(key, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))


# ---- held-out topic split ----------------------------------------------------------------------


def topic_of(record: dict, field: str = "url") -> str:
    """The topic key: for a URL, host + path without its last segment; else the field's value;
    without the field, the document itself (a hash of its text)."""
    value = record.get(field)
    if isinstance(value, str) and value:
        if "://" in value:
            parts = urlsplit(value)
            path = parts.path.rstrip("/")
            parent = path.rsplit("/", 1)[0] if "/" in path else path
            return f"{parts.netloc}{parent}"
        return value
    return "doc:" + hashlib.blake2b(record["text"].encode("utf-8"), digest_size=8).hexdigest()


def is_held_out(topic: str, share: float, seed: int) -> bool:
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{topic}".encode(), digest_size=8).digest(), "big")
    return h / 2.0**64 < share


def split_by_topic(records: list[dict], *, share: float, field: str, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, valid): a topic is entirely on one side."""
    train, valid = [], []
    for r in records:
        (valid if is_held_out(topic_of(r, field), share, seed) else train).append(r)
    return train, valid


# ---- mixing ------------------------------------------------------------------------------------


def take_tokens(
    records: list[dict], lengths: list[int], budget: int, rng: random.Random
) -> tuple[list[dict], int, int]:
    """Documents in a seeded random order until `budget` tokens; cycles (repeats) when there are too
    few. Returns (documents, tokens, passes over the data)."""
    if not records or budget <= 0:
        return [], 0, 0
    order = list(range(len(records)))
    out, tokens, passes = [], 0, 0
    while tokens < budget:
        rng.shuffle(order)
        passes += 1
        for i in order:
            out.append(records[i])
            tokens += lengths[i]
            if tokens >= budget:
                break
    return out, tokens, passes


def mix(
    experimental: list[dict],
    exp_lengths: list[int],
    base: list[dict],
    base_lengths: list[int],
    *,
    share: float,
    tokens: int,
    seed: int,
) -> tuple[list[dict], dict]:
    """`share` of `tokens` from the experimental documents, the rest from the base documents."""
    rng = random.Random(seed)
    exp_docs, exp_tokens, exp_passes = take_tokens(experimental, exp_lengths, round(share * tokens), rng)
    base_docs, base_tokens, base_passes = take_tokens(base, base_lengths, tokens - round(share * tokens), rng)
    docs = [dict(r, ablation_part="experimental") for r in exp_docs] + [
        dict(r, ablation_part="base") for r in base_docs
    ]
    rng.shuffle(docs)
    info = {
        "experimental_tokens": exp_tokens,
        "base_tokens": base_tokens,
        "experimental_share": exp_tokens / max(1, exp_tokens + base_tokens),
        "experimental_passes": exp_passes,
        "base_passes": base_passes,
        "experimental_docs_available": len(experimental),
        "base_docs_available": len(base),
    }
    return docs, info


# ---- the whole preparation ---------------------------------------------------------------------


def process_data(params: DataParams, corpus_uri: str, out: ObjectStore) -> None:
    from zhinao.data.processing import run_data_processing

    if StageOutput(out).is_finished():
        return
    report = run_data_processing(
        params, corpus=open_store(corpus_uri), output=out, dist=DistEnv(0, 1, 0), run_id="ablation"
    )
    StageOutput(out).write_summary({"docs_written": report["docs_written"]})


def token_lengths(tokenizer, records: list[dict]) -> list[int]:
    if not records:
        return []
    enc = tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"]
    return [len(ids) + 1 for ids in enc]  # + <eod>


def train_tokenizer(params: AblationParams, records: list[dict], out: ObjectStore) -> None:
    tp = params.tokenizer
    texts = (r["text"] for r in records[: tp.max_documents or None])
    tok = train_bpe(texts, vocab_size=tp.vocab_size, min_frequency=tp.min_frequency)
    with tempfile.TemporaryDirectory() as tmp:
        to_transformers(tok).save_pretrained(tmp)
        StageOutput(out).put_tokenizer(Path(tmp))


def fetch_prep_tokenizer(prep: ObjectStore, dest: Path):
    return load_tokenizer(StageOutput(prep.child(PREP_TOKENIZER)).fetch_tokenizer(dest))


def pack_valid(tokenizer, records: list[dict], *, seq_len: int, max_sequences: int, seed: int) -> np.ndarray:
    eod = tokenizer.convert_tokens_to_ids(EOD)
    ids = tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"]
    seqs = pack_source(ids, seq_len=seq_len, eod_id=eod)
    if len(seqs) > max_sequences:
        keep = np.sort(np.random.default_rng(seed).choice(len(seqs), size=max_sequences, replace=False))
        seqs = seqs[keep]
    return seqs


def prepare(params: AblationParams, prep_uri: str, *, listener=None) -> dict:
    """Build everything the runs read. Idempotent: steps whose output exists are skipped."""
    notify = listener or (lambda event, data: None)
    prep = open_store(prep_uri)
    if params.evaluations.sft.enabled:
        write_builtin(params.evaluations.sft, prep_uri, seed=params.seed)
    if prep.exists("done.json"):
        return json.loads(prep.get_bytes("done.json"))
    vl = params.evaluations.valid_loss
    notify("prep", {"step": "base"})
    if params.base.data is not None:
        process_data(params.base.data, params.base.corpus, prep.child("base"))
        base_records = read_records(prep.child("base"))
    else:
        base_records = read_records(open_store(params.base.corpus))
    base_train, base_valid = split_by_topic(
        base_records, share=vl.held_out_share, field=vl.topic_field, seed=params.seed
    )
    if not base_valid:
        raise ValueError(
            f"no base document falls in the held-out topics (share {vl.held_out_share}); raise heldOutShare"
        )
    held_topics = sorted({topic_of(r, vl.topic_field) for r in base_valid})
    write_records(prep, "valid/docs.jsonl", base_valid)

    notify("prep", {"step": "tokenizer"})
    if not StageOutput(prep.child(PREP_TOKENIZER)).has_tokenizer():
        train_tokenizer(params, base_train, prep.child(PREP_TOKENIZER))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = fetch_prep_tokenizer(prep, Path(tmp) / "tok")
    valid = pack_valid(
        tokenizer, base_valid, seq_len=params.proxy.seq_len, max_sequences=vl.max_sequences, seed=params.seed
    )
    if len(valid) == 0:
        raise ValueError("the held-out topics hold fewer tokens than one sequence; raise heldOutShare")
    buf = io.BytesIO()
    np.save(buf, valid)
    prep.put_bytes("valid/tokens.npy", buf.getvalue())
    base_lengths = token_lengths(tokenizer, base_train)

    summary: dict = {
        "base_docs": len(base_records),
        "base_train_docs": len(base_train),
        "valid_docs": len(base_valid),
        "valid_topics": len(held_topics),
        "valid_sequences": int(len(valid)),
        "recipes": {},
    }
    for recipe in params.recipes:
        notify("prep", {"step": f"recipe {recipe.name}"})
        summary["recipes"][recipe.name] = prepare_recipe(params, recipe, prep, tokenizer, base_train, base_lengths)
    prep.put_bytes(
        "valid/split.json",
        json.dumps({"topic_field": vl.topic_field, "held_out_topics": held_topics}, indent=1).encode(),
    )
    prep.put_bytes("done.json", json.dumps(summary, indent=2).encode())
    return summary


def prepare_recipe(
    params: AblationParams, recipe: Recipe, prep: ObjectStore, tokenizer, base_train, base_lengths
) -> dict:
    vl = params.evaluations.valid_loss
    rdir = prep.child(f"recipes/{recipe.name}")
    if recipe.dataset is not None:
        records = read_records(open_store(recipe.dataset))
    else:
        process_data(recipe.data or DataParams(), params.recipe_corpus(recipe), rdir.child("data"))
        records = read_records(rdir.child("data"))
    train, dropped = split_by_topic(records, share=vl.held_out_share, field=vl.topic_field, seed=params.seed)
    if not train:
        raise ValueError(f"recipe {recipe.name!r} has no document outside the held-out topics")
    docs, info = mix(
        train,
        token_lengths(tokenizer, train),
        base_train,
        base_lengths,
        share=params.experimental_share,
        tokens=params.proxy.tokens,
        seed=params.seed,
    )
    info["experimental_docs_in_held_out_topics"] = len(dropped)
    write_records(rdir, "train/docs/part-00000.jsonl", docs)
    rdir.put_bytes("train/mix.json", json.dumps(info, indent=2).encode())
    return info
