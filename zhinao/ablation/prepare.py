"""Data of an ablation: held-out topic split, one shared tokenizer, recipe/base mixing at a share.

Layout under the ablation's prep prefix (`<storage>/<ablation>/prep`):

    base/                    data-stage output over the base corpus (when base.data is set)
    tokenizer/tokenizer/     the shared tokenizer (the tokenizer stage's layout)
    valid/docs/              held-out documents of the base data (whole topics)
    valid/tokens.npy         (n, seqLen) validation sequences packed from them (the runs' inputs.valid)
    recipes/<r>/data/        the recipe's data-stage output
    recipes/<r>/train/docs/  the run's training documents: experimental + base at the share
    recipes/<r>/train/tokens/  the mixture packed into token shards + index (the stream format of
                             zhinao.data.token_shards): every run of the recipe reads them
                             (pretrain `inputs.tokens`) instead of tokenizing the mixture itself
    recipes/<r>/train/mix.json
    sft/data/, sft/prompts/  the built-in SFT evaluation data (sft_eval.py), when the spec names none
    done.json                marker written last (a finished prep is reused)

The data-stage outputs are written before, by the ablation's data pipeline (one distributed
data-stage PyTorchJob per corpus, `AblationParams.processed`). Everything here streams: documents
are read from storage, measured or written, and dropped (zhinao.ablation.mixture), so no corpus is
held in this process's memory; per document it keeps a token length and a copy count.

Why one tokenizer: losses are per token, so runs are comparable only if they cut text into the
same tokens; a recipe-specific tokenizer would change the loss unit. It is trained on the base
data's training topics, which every run shares and no recipe influences.
"""

import hashlib
import io
import itertools
import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from zhinao.ablation.mixture import (
    TOKENIZE_BATCH,
    batched,
    copies,
    interleave,
    measure,
    repeat,
    sample_rows,
    write_parts,
)
from zhinao.ablation.sft_eval import write_builtin
from zhinao.artifacts import StageOutput, published_store
from zhinao.config.ablation import BASE_DATA, AblationParams, Recipe, recipe_data
from zhinao.config.stream import TokenStreamParams
from zhinao.corpus import corpus_keys, jsonl_lines
from zhinao.data.packing import iter_packed
from zhinao.data.tokenize_shards import merge_parts, tokenize_share
from zhinao.storage import ObjectStore, open_store
from zhinao.tokenizer import EOD, to_transformers, train_bpe
from zhinao.tokenizer import load as load_tokenizer

PREP_TOKENIZER = "tokenizer"
"""The shared tokenizer's prefix under the preparation root, laid out as a tokenizer stage's output."""


# ---- documents ---------------------------------------------------------------------------------


def iter_records(store: ObjectStore) -> Iterator[dict]:
    """Every JSON object with a non-empty `text` under the prefix (docs/ of a data-stage output first),
    one file in memory at a time."""
    for _key, _number, line in jsonl_lines(store, corpus_keys(store)):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("text"), str) and rec["text"].strip():
            yield rec


def read_records(store: ObjectStore) -> list[dict]:
    return list(iter_records(store))


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


# ---- the whole preparation ---------------------------------------------------------------------


def processed(prep: ObjectStore, prefix: str, what: str) -> ObjectStore:
    """What the data stage published at `prefix` of the preparation root; it must have finished."""
    out = StageOutput(prep.child(prefix))
    if not out.is_finished():
        raise ValueError(
            f"{what}: {prep.child(prefix).uri} holds no finished data-stage output (_published.json): the "
            "ablation's data pipeline `<ablation>-data` processes it first"
        )
    return out.store


def train_tokenizer(params: AblationParams, texts: Iterable[str], out: ObjectStore) -> None:
    tp = params.tokenizer
    tok = train_bpe(
        itertools.islice(texts, tp.max_documents or None), vocab_size=tp.vocab_size, min_frequency=tp.min_frequency
    )
    with tempfile.TemporaryDirectory() as tmp:
        to_transformers(tok).save_pretrained(tmp)
        StageOutput(out).put_tokenizer(Path(tmp))


def fetch_prep_tokenizer(prep: ObjectStore, dest: Path):
    return load_tokenizer(StageOutput(prep.child(PREP_TOKENIZER)).fetch_tokenizer(dest))


class Split:
    """One base or recipe source split by topic, read afresh from storage at each pass."""

    def __init__(self, store: ObjectStore, vl, seed: int):
        self.store, self.vl, self.seed = store, vl, seed

    def held_out(self, record: dict) -> bool:
        return is_held_out(topic_of(record, self.vl.topic_field), self.vl.held_out_share, self.seed)

    def train(self) -> Iterator[dict]:
        return (r for r in iter_records(self.store) if not self.held_out(r))

    def valid(self) -> Iterator[dict]:
        return (r for r in iter_records(self.store) if self.held_out(r))


def prepare_valid(params: AblationParams, base: Split, tokenizer, prep: ObjectStore) -> dict:
    """valid/docs/ (the held-out documents), valid/tokens.npy (a seeded sample of maxSequences
    packed sequences of them) and valid/split.json; returns the counts for the summary."""
    vl = params.evaluations.valid_loss
    topics: set[str] = set()
    docs = 0

    def held_out() -> Iterator[dict]:
        nonlocal docs
        for r in base.valid():
            topics.add(topic_of(r, vl.topic_field))
            docs += 1
            yield r

    write_parts(prep, "valid/docs", held_out())
    if docs == 0:
        raise ValueError(
            f"no base document falls in the held-out topics (share {vl.held_out_share}); raise heldOutShare"
        )
    eod = tokenizer.convert_tokens_to_ids(EOD)
    ids = (
        i
        for batch in batched(base.valid(), TOKENIZE_BATCH)
        for i in tokenizer([r["text"] for r in batch], add_special_tokens=False)["input_ids"]
    )
    rows = iter_packed(ids, seq_len=params.proxy.seq_len, eod_id=eod)
    valid = sample_rows(rows, vl.max_sequences, np.random.default_rng(params.seed))
    if len(valid) == 0:
        raise ValueError("the held-out topics hold fewer tokens than one sequence; raise heldOutShare")
    buf = io.BytesIO()
    np.save(buf, valid)
    prep.put_bytes("valid/tokens.npy", buf.getvalue())
    prep.put_bytes(
        "valid/split.json",
        json.dumps({"topic_field": vl.topic_field, "held_out_topics": sorted(topics)}, indent=1).encode(),
    )
    return {"valid_docs": docs, "valid_topics": len(topics), "valid_sequences": int(len(valid))}


def prepare(params: AblationParams, prep_uri: str, *, listener=None) -> dict:
    """Build everything the runs read from the data pipeline's outputs (or the corpora used as is).
    Idempotent: a finished preparation (done.json), the tokenizer and finished recipes are reused."""
    notify = listener or (lambda event, data: None)
    prep = open_store(prep_uri)
    if params.evaluations.sft.enabled:
        write_builtin(params.evaluations.sft, prep_uri, seed=params.seed)
    if prep.exists("done.json") and all(recipe_tokens(prep, r.name).has_tokens() for r in params.recipes):
        return json.loads(prep.get_bytes("done.json"))
    vl = params.evaluations.valid_loss
    base_store = (
        processed(prep, BASE_DATA, "base")
        if params.base.data is not None
        else published_store(open_store(params.base.corpus))
    )
    base = Split(base_store, vl, params.seed)

    notify("prep", {"step": "tokenizer"})
    if not StageOutput(prep.child(PREP_TOKENIZER)).has_tokenizer():
        train_tokenizer(params, (r["text"] for r in base.train()), prep.child(PREP_TOKENIZER))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = fetch_prep_tokenizer(prep, Path(tmp) / "tok")
    notify("prep", {"step": "valid"})
    summary: dict = prepare_valid(params, base, tokenizer, prep)
    base_lengths, base_keys = measure(tokenizer, base.train(), params.seed)
    summary.update(base_docs=len(base_lengths) + summary["valid_docs"], base_train_docs=len(base_lengths), recipes={})
    for recipe in params.recipes:
        notify("prep", {"step": f"recipe {recipe.name}"})
        summary["recipes"][recipe.name] = prepare_recipe(
            params, recipe, prep, tokenizer, base, copies(base_lengths, base_keys, base_budget(params))
        )
    prep.put_bytes("done.json", json.dumps(summary, indent=2).encode())
    return summary


def exp_budget(params: AblationParams) -> int:
    return round(params.experimental_share * params.proxy.tokens)


def base_budget(params: AblationParams) -> int:
    return params.proxy.tokens - exp_budget(params)


def prepare_recipe(
    params: AblationParams,
    recipe: Recipe,
    prep: ObjectStore,
    tokenizer,
    base: Split,
    base_take: tuple[np.ndarray, int, int],
) -> dict:
    """recipes/<r>/train/docs/: `experimentalShare` of `proxy.tokens` from the recipe's documents
    outside the held-out topics, the rest from the base's, randomly interleaved; then their token
    shards (train/tokens/); mix.json last."""
    rdir = prep.child(f"recipes/{recipe.name}")
    if rdir.exists("train/mix.json") and recipe_tokens(prep, recipe.name).has_tokens():  # an earlier attempt's
        return json.loads(rdir.get_bytes("train/mix.json"))
    source = (
        published_store(open_store(recipe.dataset))
        if recipe.dataset is not None
        else processed(prep, recipe_data(recipe.name), f"recipe {recipe.name!r}")
    )
    exp = Split(source, params.evaluations.valid_loss, params.seed)
    exp_lengths, exp_keys = measure(tokenizer, exp.train(), params.seed)
    if len(exp_lengths) == 0:
        raise ValueError(f"recipe {recipe.name!r} has no document outside the held-out topics")
    exp_counts, exp_tokens, exp_passes = copies(exp_lengths, exp_keys, exp_budget(params))
    base_counts, base_tokens, base_passes = base_take
    docs = interleave(
        (dict(r, ablation_part="experimental") for r in repeat(exp.train, exp_counts)),
        int(exp_counts.sum()),
        (dict(r, ablation_part="base") for r in repeat(base.train, base_counts)),
        int(base_counts.sum()),
        np.random.default_rng(params.seed),
    )
    write_parts(rdir, "train/docs", docs)
    info = {
        "experimental_tokens": exp_tokens,
        "base_tokens": base_tokens,
        "experimental_share": exp_tokens / max(1, exp_tokens + base_tokens),
        "experimental_passes": exp_passes,
        "base_passes": base_passes,
        "experimental_docs_available": len(exp_lengths),
        "base_docs_available": len(base_counts),
        "experimental_docs_in_held_out_topics": sum(1 for _ in exp.valid()),
        **tokenize_mixture(recipe_tokens(prep, recipe.name), tokenizer, params.proxy.seq_len),
    }
    rdir.put_bytes("train/mix.json", json.dumps(info, indent=2).encode())
    return info


def recipe_tokens(prep: ObjectStore, recipe: str) -> StageOutput:
    """recipes/<r>/train/: the recipe's mixed documents and their token shards, the prefix every
    run of the recipe names as its pretrain stage's `inputs.tokens`."""
    return StageOutput(prep.child(f"recipes/{recipe}/train"))


def tokenize_mixture(train: StageOutput, tokenizer, seq_len: int) -> dict:
    """Pack the mixture's documents (train/docs/) into token shards + index under train/tokens/, once
    per recipe: with N seeds the runs would otherwise tokenize the same mixture N times. One process
    holds one shard at a time (zhinao.data.tokenize_shards), as a run's tokenize step did."""
    tokenize_share(train.store, tokenizer, train, seq_len=seq_len, params=TokenStreamParams(), rank=0, world_size=1)
    index = merge_parts(train, world_size=1, where=train.uri)
    return {"train_sequences": index.sequences, "train_token_shards": len(index.shards)}
