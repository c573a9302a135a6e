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
    spec.json                the spec values the files are made from (a rerun from others is refused)
    done.json                marker written last (a finished prep is reused)

The data-stage outputs are written before, by the ablation's data pipeline (one distributed
data-stage PyTorchJob per corpus, `AblationParams.processed`). The preparation runs on every rank
of its own job (`zhinao.ablation.ranks`): rank 0 trains the tokenizer and writes the validation set
and each mixture's documents; every rank measures its share of each source's lines and packs its run
of each mixture's documents (zhinao.ablation.mixture_tokens); rank 0 gathers lengths and order keys
to decide the mixture. The files are the same for any number of ranks. Everything here streams:
documents are read from storage, measured or written, and dropped (zhinao.ablation.mixture), so no
corpus is held in a process's memory; per document rank 0 keeps its token length, order key and
copy count (about 3 x 20 bytes at the peak of the gather).

Why one tokenizer: losses are per token, so runs are comparable only if they cut text into the
same tokens; a recipe-specific tokenizer would change the loss unit. It is trained on the base
data's training topics, which every run shares and no recipe influences.
"""

import hashlib
import io
import itertools
import json
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
from zhinao.ablation.mixture_tokens import DOCS, Plan, Planner, join_and_merge, tokenize_span
from zhinao.ablation.ranks import Ranks
from zhinao.ablation.sft_eval import write_builtin
from zhinao.artifacts import StageOutput, published_store
from zhinao.config.ablation import BASE_DATA, AblationParams, Recipe, recipe_data
from zhinao.config.stream import TokenStreamParams
from zhinao.corpus import corpus_keys, jsonl_lines, lines_of_rank
from zhinao.data.packing import iter_packed
from zhinao.fingerprint import differences
from zhinao.storage import ObjectStore, open_store
from zhinao.tokenizer import EOD, to_transformers, train_bpe
from zhinao.tokenizer import load as load_tokenizer

SHARD_TOKENS = TokenStreamParams().shard_tokens
"""Tokens per token shard of a mixture: the tokenize step's default."""
PREP_DONE = "done.json"
"""The preparation's summary, written last: its presence means a finished preparation."""
PREP_SPEC = "spec.json"
"""What the preparation is made from (prep_spec), written first: a rerun from other values is refused
instead of reusing files that no longer match the spec."""
PREP_TOKENIZER = "tokenizer"
"""The shared tokenizer's prefix under the preparation root, laid out as a tokenizer stage's output."""


# ---- documents ---------------------------------------------------------------------------------


def record_of(line: bytes) -> dict | None:
    """The line's JSON object when it has a non-empty `text`, else None."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if isinstance(rec, dict) and isinstance(rec.get("text"), str) and rec["text"].strip():
        return rec
    return None


def iter_records(store: ObjectStore) -> Iterator[dict]:
    """Every JSON object with a non-empty `text` under the prefix (docs/ of a data-stage output first),
    one file in memory at a time."""
    for _key, _number, line in jsonl_lines(store, corpus_keys(store)):
        if (rec := record_of(line)) is not None:
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


@dataclass
class Measured:
    """What the mixing decision needs of a source's training documents, in the order one process reads them."""

    lengths: np.ndarray
    """Tokens of each document, <eod> included."""
    keys: np.ndarray
    """Its order key (zhinao.ablation.mixture.measure)."""
    held_out: int
    """Documents in the held-out topics (not measured)."""


def measure_share(tokenizer, split: Split, ranks: Ranks, seed: int) -> Measured | None:
    """Every rank tokenizes its share of the source's lines (zhinao.corpus.lines_of_rank); rank 0
    gathers length, key and place of each training document (20 bytes) and puts them in one-process order
    (file, then line). None on the other ranks."""
    files = corpus_keys(split.store)
    file_number = {key: n for n, key in enumerate(files)}
    where = array("q")  # file number << 32 | line number of each measured document
    held_out = 0

    def train() -> Iterator[dict]:
        nonlocal held_out
        for key, number, line in lines_of_rank(split.store, files, rank=ranks.rank, world_size=ranks.world_size):
            if (rec := record_of(line)) is None:
                continue
            if split.held_out(rec):
                held_out += 1
                continue
            where.append(file_number[key] << 32 | number)
            yield rec

    lengths, keys = measure(tokenizer, train(), seed)
    shares = ranks.gather((np.asarray(where, dtype=np.int64), lengths, keys, held_out))
    if shares is None:
        return None
    order = np.argsort(np.concatenate([s[0] for s in shares]), kind="stable")
    return Measured(
        lengths=np.concatenate([s[1] for s in shares])[order],
        keys=np.concatenate([s[2] for s in shares])[order],
        held_out=sum(s[3] for s in shares),
    )


@dataclass
class Take:
    """How many copies of each document a mixture takes (zhinao.ablation.mixture.copies)."""

    counts: np.ndarray
    """Copies of each document, in one-process stream order."""
    tokens: int
    """Tokens the copies hold (<eod> included)."""
    passes: int
    """Passes over the source's documents they take, the last partial."""
    lengths: np.ndarray
    """Tokens of each document (Measured.lengths): the plan cuts the mixture by them."""

    @classmethod
    def of(cls, measured: Measured, budget: int) -> "Take":
        return cls(*copies(measured.lengths, measured.keys, budget), measured.lengths)


def prepare(params: AblationParams, prep_uri: str, *, listener=None, ranks: Ranks = Ranks()) -> dict:
    """Build everything the runs read from the data pipeline's outputs (or the corpora used as is),
    on every rank of `ranks`: the same files for any number of ranks. Idempotent: a finished
    preparation (done.json), the tokenizer and finished recipes are reused."""
    notify = listener or (lambda event, data: None)
    prep = open_store(prep_uri)
    ranks.on_main(lambda: check_spec(params, prep))
    done = ranks.on_main(lambda: finished(params, prep_uri, prep))
    if done is not None:
        return done
    vl = params.evaluations.valid_loss
    base_store = (
        processed(prep, BASE_DATA, "base")
        if params.base.data is not None
        else published_store(open_store(params.base.corpus))
    )
    base = Split(base_store, vl, params.seed)

    notify("prep", {"step": "tokenizer"})
    ranks.on_main(lambda: ensure_tokenizer(params, base, prep))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = fetch_prep_tokenizer(prep, Path(tmp) / "tok")
    notify("prep", {"step": "valid"})
    summary: dict = ranks.on_main(lambda: prepare_valid(params, base, tokenizer, prep))
    measured = measure_share(tokenizer, base, ranks, params.seed)
    base_take = None if measured is None else Take.of(measured, base_budget(params))
    if measured is not None:
        summary.update(base_docs=len(measured.lengths) + summary["valid_docs"], base_train_docs=len(measured.lengths))
    summary["recipes"] = {}
    for recipe in params.recipes:
        notify("prep", {"step": f"recipe {recipe.name}"})
        summary["recipes"][recipe.name] = prepare_recipe(params, recipe, prep, tokenizer, base, base_take, ranks)

    def write_done() -> dict:
        prep.put_bytes(PREP_DONE, json.dumps(summary, indent=2).encode())
        return summary

    return ranks.on_main(write_done)


def prep_spec(params: AblationParams) -> dict:
    """The spec's values the preparation's files depend on, as written in the spec. Not the seeds, the
    proxy's model and resources, the data jobs or the benchmarks: changing those reuses the files."""
    wire = params.model_dump(mode="json", by_alias=True)
    return {
        **{key: wire[key] for key in ("base", "corpus", "recipes", "experimentalShare", "seed", "tokenizer")},
        "proxy": {key: wire["proxy"][key] for key in ("tokens", "seqLen")},
        "evaluations": {key: wire["evaluations"][key] for key in ("validLoss", "sft")},
    }


def check_spec(params: AblationParams, prep: ObjectStore) -> None:
    """Record what this preparation is made from, or refuse to continue one made from other values
    (its tokenizer, mixtures and validation set would silently stand for the old spec)."""
    current = prep_spec(params)
    if not prep.exists(PREP_SPEC):
        prep.put_bytes(PREP_SPEC, json.dumps(current, indent=2, sort_keys=True).encode())
        return
    recorded = json.loads(prep.get_bytes(PREP_SPEC))
    if recorded != current:
        raise ValueError(
            f"{prep.uri} was prepared from other values ({'; '.join(differences(recorded, current))}); "
            "its data does not match this spec. Give the ablation another name, or delete that prefix "
            "to prepare it again"
        )


def finished(params: AblationParams, prep_uri: str, prep: ObjectStore) -> dict | None:
    """The summary of an earlier attempt that finished (None: prepare); the built-in SFT data first."""
    if params.evaluations.sft.enabled:
        write_builtin(params.evaluations.sft, prep_uri, seed=params.seed)
    if prep.exists(PREP_DONE) and all(recipe_tokens(prep, r.name).has_tokens() for r in params.recipes):
        return json.loads(prep.get_bytes(PREP_DONE))
    return None


def ensure_tokenizer(params: AblationParams, base: Split, prep: ObjectStore) -> None:
    if not StageOutput(prep.child(PREP_TOKENIZER)).has_tokenizer():
        train_tokenizer(params, (r["text"] for r in base.train()), prep.child(PREP_TOKENIZER))


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
    base_take: Take | None,
    ranks: Ranks,
) -> dict:
    """recipes/<r>/train/docs/: `experimentalShare` of `proxy.tokens` from the recipe's documents
    outside the held-out topics, the rest from the base's, randomly interleaved (rank 0); then their
    token shards (train/tokens/, every rank its run of documents); mix.json last."""
    rdir = prep.child(f"recipes/{recipe.name}")
    train = recipe_tokens(prep, recipe.name)
    if ranks.on_main(lambda: rdir.exists("train/mix.json") and train.has_tokens()):  # an earlier attempt's
        return json.loads(rdir.get_bytes("train/mix.json"))
    source = (
        published_store(open_store(recipe.dataset))
        if recipe.dataset is not None
        else processed(prep, recipe_data(recipe.name), f"recipe {recipe.name!r}")
    )
    exp = Split(source, params.evaluations.valid_loss, params.seed)
    measured = measure_share(tokenizer, exp, ranks, params.seed)
    plan, info = ranks.on_main(
        lambda: write_mixture(params, recipe, train, exp, measured, base, base_take, world_size=ranks.world_size)
    )
    part = tokenize_span(
        train, tokenizer, plan, rank=ranks.rank, seq_len=params.proxy.seq_len, shard_tokens=SHARD_TOKENS
    )
    if not ranks.main:
        train.put_tokens_part(ranks.rank, part)
    ranks.barrier()

    def finish() -> dict:
        index = join_and_merge(train, part, world_size=ranks.world_size, shard_tokens=SHARD_TOKENS)
        info.update(train_sequences=index.sequences, train_token_shards=len(index.shards))
        rdir.put_bytes("train/mix.json", json.dumps(info, indent=2).encode())
        return info

    return ranks.on_main(finish)


def write_mixture(
    params: AblationParams,
    recipe: Recipe,
    train: StageOutput,
    exp: Split,
    measured: Measured,
    base: Split,
    base_take: Take,
    *,
    world_size: int,
) -> tuple[Plan, dict]:
    """Rank 0: the mixture's documents written, which ranks pack which of them, and its counts."""
    if len(measured.lengths) == 0:
        raise ValueError(f"recipe {recipe.name!r} has no document outside the held-out topics")
    exp_take = Take.of(measured, exp_budget(params))
    docs = interleave(
        ((dict(r, ablation_part="experimental"), exp_take.lengths[i]) for i, r in repeat(exp.train, exp_take.counts)),
        int(exp_take.counts.sum()),
        ((dict(r, ablation_part="base"), base_take.lengths[i]) for i, r in repeat(base.train, base_take.counts)),
        int(base_take.counts.sum()),
        np.random.default_rng(params.seed),
    )
    train.delete_token_pieces()  # an earlier attempt's, perhaps of another number of ranks
    planner = Planner(total_tokens=exp_take.tokens + base_take.tokens, world_size=world_size)
    plan = planner.finish(write_parts(train.store, DOCS, planner.follow(docs)))
    info = {
        "experimental_tokens": exp_take.tokens,
        "base_tokens": base_take.tokens,
        "experimental_share": exp_take.tokens / max(1, exp_take.tokens + base_take.tokens),
        "experimental_passes": exp_take.passes,
        "base_passes": base_take.passes,
        "experimental_docs_available": len(measured.lengths),
        "base_docs_available": len(base_take.counts),
        "experimental_docs_in_held_out_topics": measured.held_out,
    }
    return plan, info


def recipe_tokens(prep: ObjectStore, recipe: str) -> StageOutput:
    """recipes/<r>/train/: the recipe's mixed documents and their token shards, the prefix every
    run of the recipe names as its pretrain stage's `inputs.tokens`."""
    return StageOutput(prep.child(f"recipes/{recipe}/train"))
