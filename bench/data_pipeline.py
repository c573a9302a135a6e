"""Data pipeline benchmark: our MinHash dedup and rule filters against datatrove's, in one run.

Corpus: documents assembled from sentences of the standard library's docstrings (real English),
with what real web text has: shared boilerplate (a site's navigation and footer on a third of the
pages), exact copies, lightly edited copies (word substitutions: 5-shingle Jaccard spread over
0.35-1.0), truncated copies and copies re-wrapped in another site's boilerplate.

* Near-dup dedup, equal parameters on both sides: 5-word shingles, 128 permutations as 16 bands x
  8 rows for datatrove (its defaults' shape); ours runs the data stage's defaults (25 bands x 5 rows
  of 128 permutations, candidates confirmed by the exact Jaccard of the two shingle sets >= 0.7,
  components). datatrove's is its four-stage pipeline
  (MinhashDedupSignature -> Buckets -> Cluster -> Filter) under LocalPipelineExecutor with one
  worker, xxhash 64-bit hashing (its default) and a whitespace word tokenizer (its English default
  needs spaCy; splitting on spaces is also the faster choice for it). Both sides read the same
  JSONL file and write the surviving documents with orjson (the parser datatrove's own JSONL
  reader and writer use, and our data stage's reader). Quality: precision and recall of the
  REMOVED documents against the ground truth: every pair with exact 5-shingle Jaccard >= 0.7 (an
  exact all-pairs similarity join with prefix filtering, independent of both tools' hashing), its
  connected components, every member but the first removed.
* Rule filters: our appendix-A rules (`check_rules`) against datatrove's GopherQualityFilter +
  GopherRepetitionFilter, each called directly per document (no executor overhead on either side).

Everything runs in one process on one core; times are CPU seconds of the process (`time.process_time`),
so the rates are per core even when other work shares the machine. The two dedups run alternately
for `--rounds` rounds and each side's median is reported, so that both see the same neighbours.

    python bench/data_pipeline.py [--docs 20000] [--planted 2000] [--rounds 5]
"""

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import random
import re
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import orjson

from zhinao.config.data import MinHashConfig, RuleThresholds
from zhinao.data.clean import check_rules
from zhinao.data.dedup import StepContext
from zhinao.data.demo_corpus import real_documents
from zhinao.data.exchange import Comm, Sharding
from zhinao.data.io import Doc, make_gid
from zhinao.data.lsh import MinHashDedup
from zhinao.data.minhash import MinHasher
from zhinao.data.text import TOKEN_RE, sentences

RESULTS = Path(__file__).parent / "results" / "data_pipeline.json"
# Rates are per core: CPU seconds of this (single-threaded) process, so that other work on a shared
# machine does not skew the comparison; wall-clock totals are recorded alongside.
cpu = time.process_time
BANDS, ROWS, NGRAM, THRESHOLD = 16, 8, 5, 0.7  # datatrove's side; ours runs MinHashConfig's defaults


# ---- corpus ------------------------------------------------------------------------------------


def build_corpus(n_docs: int, n_planted: int, seed: int) -> list[str]:
    """Pages of real sentences; a third carry one of 20 sites' boilerplate; `n_planted` are copies of
    earlier pages: exact, edited (0-12% of words substituted), truncated (50-95% kept) or re-wrapped
    in another site's boilerplate."""
    rng = random.Random(seed)
    pool = sorted(
        {s for r in real_documents(None, random.Random(seed)) for s in sentences(r["text"]) if 40 <= len(s) <= 400}
    )
    sites = [(" ".join(rng.sample(pool, 2)), " ".join(rng.sample(pool, 3))) for _ in range(20)]

    def wrap(body: str) -> str:
        nav, footer = rng.choice(sites)
        return f"{nav}\n{body}\n{footer}"

    bodies = []
    for _ in range(n_docs - n_planted):
        k = rng.randint(6, 18)
        bodies.append("\n".join(" ".join(rng.sample(pool, rng.randint(1, 4))) for _ in range(max(1, k // 3))))
    docs = [wrap(b) if rng.random() < 1 / 3 else b for b in bodies]
    for i in rng.sample(range(len(docs)), n_planted):
        kind = rng.choice(["exact", "edit", "edit", "truncate", "rewrap"])
        if kind == "exact":
            docs.append(docs[i])
        elif kind == "edit":
            words = docs[i].split(" ")
            for _ in range(int(rng.uniform(0.0, 0.12) * len(words))):
                words[rng.randrange(len(words))] = rng.choice(pool).split(" ")[0]
            docs.append(" ".join(words))
        elif kind == "truncate":
            words = docs[i].split(" ")
            docs.append(" ".join(words[: max(1, int(rng.uniform(0.5, 0.95) * len(words)))]))
        else:
            docs.append(wrap(bodies[i]))
    return docs


def shingle_set(text: str) -> set:
    toks = [t.lower() for t in TOKEN_RE.findall(text)]
    return {tuple(toks[i : i + NGRAM]) for i in range(max(1, len(toks) - NGRAM + 1))} if toks else set()


def true_duplicates(docs: list[str], threshold: float) -> set[int]:
    """Documents a perfect near-dup step removes: every pair with exact Jaccard >= threshold (an
    all-pairs similarity join: two sets with J >= t share a token among the first |A| - ceil(t|A|) + 1
    of each, in a global order), connected components, all members but the smallest index."""
    sets = [shingle_set(d) for d in docs]
    freq: dict = {}
    for st in sets:
        for sh in st:
            freq[sh] = freq.get(sh, 0) + 1
    rank = {sh: r for r, sh in enumerate(sorted(freq, key=lambda x: (freq[x], x)))}
    index: dict[int, list[int]] = {}
    parent = list(range(len(docs)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, st in enumerate(sets):
        if not st:
            continue
        ordered = sorted(rank[sh] for sh in st)
        prefix = ordered[: len(st) - int(np.ceil(threshold * len(st))) + 1]
        seen = set()
        for r in prefix:
            for j in index.get(r, ()):
                if j in seen:
                    continue
                seen.add(j)
                inter = len(st & sets[j])
                if inter / (len(st) + len(sets[j]) - inter) >= threshold:
                    a, b = find(i), find(j)
                    parent[max(a, b)] = min(a, b)
            index.setdefault(r, []).append(i)
    return {i for i in range(len(docs)) if find(i) != i}


def removed_quality(removed: set[int], truth: set[int]) -> dict:
    tp, fp, fn = len(removed & truth), len(removed - truth), len(truth - removed)
    return prf(tp, fp, fn)


def prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


# ---- ours --------------------------------------------------------------------------------------


def removed_ids(corpus: Path, kept: Path) -> set[int]:
    def ids(path: Path) -> set[int]:
        with open(path, "rb") as f:
            return {int(orjson.loads(line)["id"]) for line in f}

    return ids(corpus) - (ids(kept) if kept.exists() else set())


def ours_dedup(path: Path, out: Path, tmp: Path) -> float:
    """The MinHashDedup step (data-stage defaults) over the file: read+collect, sync, read+apply+write."""
    t0 = cpu()
    step = MinHashDedup(MinHashConfig(ngram=NGRAM, threshold=THRESHOLD), StepContext(Sharding(1, 1), 0, tmp))
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            step.collect(Doc(make_gid(0, i), orjson.loads(line)["text"], "webpages"))
    step.sync(Comm(None, 0, 1))
    with open(path, "rb") as f, open(out, "wb") as w:
        for i, line in enumerate(f):
            rec = orjson.loads(line)
            if step.apply(Doc(make_gid(0, i), rec["text"], "webpages")) is None:
                w.write(orjson.dumps(rec) + b"\n")
    return cpu() - t0


def ours_signatures(docs: list[str]) -> float:
    mh = MinHasher(num_perm=BANDS * ROWS, ngram=NGRAM, bands=BANDS, rows=ROWS)
    t0 = cpu()
    for i in range(0, len(docs), 512):
        mh.band_keys(mh.signatures(docs[i : i + 512]))
    return cpu() - t0


def datasketch_signatures(docs: list[str]) -> float:
    from datasketch import MinHash

    t0 = cpu()
    for text in docs:
        toks = [t.lower() for t in TOKEN_RE.findall(text)]
        m = MinHash(num_perm=BANDS * ROWS)
        m.update_batch([" ".join(toks[i : i + NGRAM]).encode() for i in range(max(1, len(toks) - NGRAM + 1))])
    return cpu() - t0


# ---- datatrove ---------------------------------------------------------------------------------


def _whitespace_tokenizer():
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Whitespace(WordTokenizer):
        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]

        def span_tokenize(self, text):
            return [m.span() for m in re.finditer(r"\S+", text)]

    return Whitespace("en")


def datatrove_dedup(corpus_dir: Path, work: Path) -> tuple[float, dict[str, float]]:
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    # The same minimal orjson reader and writer as ours (datatrove's JsonlReader/JsonlWriter parse
    # with orjson too, and add per-document metadata and stats on top).
    def read(data, rank=0, world_size=1):
        with open(corpus_dir / "docs.jsonl", "rb") as f:
            for line in f:
                rec = orjson.loads(line)
                yield Document(text=rec["text"], id=rec["id"])

    def write(data, rank=0, world_size=1):
        (work / "out").mkdir(parents=True, exist_ok=True)
        with open(work / "out" / f"{rank:05d}.jsonl", "wb") as f:
            for doc in data:
                f.write(orjson.dumps({"id": doc.id, "text": doc.text}) + b"\n")
        yield from ()

    cfg = MinhashConfig(
        n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS, hash_config=HashConfig(precision=64, hash_fc="xxhash")
    )
    tok = _whitespace_tokenizer()
    reader = lambda: read  # noqa: E731
    stages = [
        (
            "signatures",
            [reader(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg, language=tok)],
            1,
        ),
        (
            "buckets",
            [MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg)],
            BANDS,
        ),
        (
            "cluster",
            [
                MinhashDedupCluster(
                    input_folder=str(work / "buckets"),
                    output_folder=str(work / "remove"),
                    config=cfg,
                )
            ],
            1,
        ),
        ("filter", [reader(), MinhashDedupFilter(input_folder=str(work / "remove")), write], 1),
    ]
    times = {}
    for name, pipeline, tasks in stages:
        t0 = cpu()
        # Its executor logs every task's stats to stderr: keep the benchmark's output readable.
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            LocalPipelineExecutor(
                pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name)
            ).run()
        times[name] = cpu() - t0
    return sum(times.values()), times


def datatrove_rules(docs: list[str]) -> float:
    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    tok = _whitespace_tokenizer()
    quality, repetition = GopherQualityFilter(language=tok), GopherRepetitionFilter(language=tok)
    t0 = cpu()
    for i, text in enumerate(docs):
        d = Document(text=text, id=str(i))
        repetition.filter(d)
        quality.filter(d)
    return cpu() - t0


def ours_rules(docs: list[str]) -> float:
    th = RuleThresholds()
    t0 = cpu()
    for text in docs:
        check_rules(text, th)
    return cpu() - t0


# ---- main --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--planted", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="alternating dedup rounds per side (medians reported)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)

    t0 = time.perf_counter()
    docs = build_corpus(args.docs, args.planted, args.seed)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    truth = true_duplicates(docs, THRESHOLD)
    print(
        f"corpus: {len(docs)} docs, {mb:.1f} MB, {args.planted} planted copies, {len(truth)} true duplicates;"
        f" built in {time.perf_counter() - t0:.0f}s",
        file=sys.stderr,
    )

    results: dict = {
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, 1 core used",
        "timing": "CPU seconds of the benchmark process (time.process_time)",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "corpus": {
            "docs": len(docs),
            "mb": round(mb, 2),
            "planted_copies": args.planted,
            "true_duplicates": len(truth),
            "jaccard_threshold": THRESHOLD,
        },
        "params": {
            "ngram": NGRAM,
            "bands": BANDS,
            "rows": ROWS,
            "num_perm": BANDS * ROWS,
            "ours": MinHashConfig(ngram=NGRAM, threshold=THRESHOLD).model_dump(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "corpus").mkdir()
        path = tmp / "corpus" / "docs.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i, text in enumerate(docs):
                f.write(json.dumps({"id": str(i), "text": text}) + "\n")
        ours_rounds, dt_rounds = [], []
        for r in range(args.rounds):
            (tmp / f"ours-{r}").mkdir()
            ours_rounds.append(ours_dedup(path, tmp / "ours.jsonl", tmp / f"ours-{r}"))
            dt_rounds.append(datatrove_dedup(tmp / "corpus", tmp / f"dt-{r}"))
            print(
                f"round {r}: ours {ours_rounds[-1]:.2f} CPU s, datatrove {dt_rounds[-1][0]:.2f} CPU s", file=sys.stderr
            )
        t_ours = float(np.median(ours_rounds))
        mid = sorted(range(args.rounds), key=lambda r: dt_rounds[r][0])[args.rounds // 2]
        t_dt, dt_times = dt_rounds[mid]
        ours_removed = removed_ids(path, tmp / "ours.jsonl")
        dt_removed = removed_ids(path, tmp / f"dt-{mid}" / "out" / "00000.jsonl")
    t_sig = ours_signatures(docs)
    t_ds = datasketch_signatures(docs[:3000])
    t_rules = ours_rules(docs)
    t_gopher = datatrove_rules(docs)

    n = len(docs)

    def rate(seconds: float, count: int = n, size: float = mb) -> dict:
        return {
            "seconds": round(seconds, 2),
            "docs_per_s": round(count / seconds),
            "mb_per_s": round(size / seconds, 2),
        }

    results["dedup"] = {
        "ours": {**rate(t_ours), **removed_quality(ours_removed, truth)},
        "datatrove": {
            **rate(t_dt),
            **removed_quality(dt_removed, truth),
            "stage_seconds": {k: round(v, 2) for k, v in dt_times.items()},
        },
    }
    results["dedup"]["speedup"] = round(t_dt / t_ours, 2)
    results["dedup"]["rounds_cpu_seconds"] = {
        "ours": [round(t, 3) for t in ours_rounds],
        "datatrove": [round(t, 3) for t, _ in dt_rounds],
    }
    results["signatures"] = {
        "ours": rate(t_sig),
        "datasketch": rate(t_ds, 3000, sum(len(d.encode()) for d in docs[:3000]) / 1e6),
        "datatrove": rate(dt_times["signatures"]),
    }
    results["rules"] = {
        "ours": rate(t_rules),
        "datatrove_gopher": rate(t_gopher),
        "speedup": round(t_gopher / t_rules, 2),
    }

    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_seconds_total"] = round(time.perf_counter() - t0, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    d, s, r = results["dedup"], results["signatures"], results["rules"]
    print(
        f"\n{len(docs):,} docs, {mb:.1f} MB, one core; truth: {len(truth)} documents with an exact 5-shingle Jaccard >= {THRESHOLD} partner"
    )
    print(f"{'':34} {'docs/s':>9} {'MB/s':>7} {'P':>6} {'R':>6} {'F1':>6}")
    for name, row in (("dedup, ours (MinHashDedup step)", d["ours"]), ("dedup, datatrove (4 stages)", d["datatrove"])):
        print(
            f"{name:34} {row['docs_per_s']:>9,} {row['mb_per_s']:>7.2f} {row['precision']:>6.3f} {row['recall']:>6.3f} {row['f1']:>6.3f}"
        )
    for name, row in (
        ("signatures, ours", s["ours"]),
        ("signatures, datasketch", s["datasketch"]),
        ("signatures, datatrove stage 1", s["datatrove"]),
    ):
        print(f"{name:34} {row['docs_per_s']:>9,} {row['mb_per_s']:>7.2f}")
    for name, row in (
        ("rules, ours (appendix A)", r["ours"]),
        ("rules, datatrove Gopher q+rep", r["datatrove_gopher"]),
    ):
        print(f"{name:34} {row['docs_per_s']:>9,} {row['mb_per_s']:>7.2f}")
    print(f"speedup: dedup {d['speedup']}x, rules {r['speedup']}x; results in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
