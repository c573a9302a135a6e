"""Data pipeline benchmark: our MinHash dedup and rule filters against datatrove's, in one run.

Corpus: documents assembled from sentences of the standard library's docstrings (real English),
plus planted near-duplicates whose 5-shingle Jaccard similarity spreads over 0.35-1.0.

* Near-dup dedup, equal parameters on both sides: 5-word shingles, 128 permutations as 16 bands x
  8 rows. Ours is the data stage's MinHashDedup step (vectorised signatures, LSH, candidates
  confirmed at estimated Jaccard >= 0.7, components). datatrove's is its four-stage pipeline
  (MinhashDedupSignature -> Buckets -> Cluster -> Filter) under LocalPipelineExecutor with one
  worker, xxhash 64-bit hashing (its default) and a whitespace word tokenizer (its English default
  needs spaCy; splitting on spaces is also the faster choice for it). Both sides read the same
  JSONL file and write the surviving documents with the standard json module (datatrove's own
  JSONL reader/writer need orjson, which we do not install). Quality: precision/recall/F1 of "same cluster"
  against exact Jaccard >= 0.7 on our shingles, over all planted pairs plus random pairs.
* Rule filters: our appendix-A rules (`check_rules`) against datatrove's GopherQualityFilter +
  GopherRepetitionFilter, each called directly per document (no executor overhead on either side).

Everything runs in one process on one core; times are CPU seconds of the process (`time.process_time`),
so the rates are per core even when other work shares the machine.

    python bench/data_pipeline.py [--docs 20000] [--planted 2000] [--random-pairs 20000]
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
BANDS, ROWS, NGRAM, THRESHOLD = 16, 8, 5, 0.7


# ---- corpus ------------------------------------------------------------------------------------


def build_corpus(n_docs: int, n_planted: int, seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    rng = random.Random(seed)
    pool = sorted(
        {s for r in real_documents(None, random.Random(seed)) for s in sentences(r["text"]) if 40 <= len(s) <= 400}
    )
    docs = []
    for _ in range(n_docs - n_planted):
        k = rng.randint(6, 18)
        paras = [" ".join(rng.sample(pool, rng.randint(1, 4))) for _ in range(max(1, k // 3))]
        docs.append("\n".join(paras))
    planted = []
    for i in rng.sample(range(len(docs)), n_planted):
        words = docs[i].split(" ")
        q = rng.uniform(0.0, 0.12)  # word substitution rate: Jaccard about s/(2-s), s = (1-q)^5
        for _ in range(int(q * len(words))):
            words[rng.randrange(len(words))] = rng.choice(pool).split(" ")[0]
        planted.append((i, len(docs)))
        docs.append(" ".join(words))
    return docs, planted


def shingle_set(text: str) -> set:
    toks = [t.lower() for t in TOKEN_RE.findall(text)]
    return {tuple(toks[i : i + NGRAM]) for i in range(max(1, len(toks) - NGRAM + 1))}


def ground_truth(docs: list[str], pairs: list[tuple[int, int]]) -> np.ndarray:
    cache: dict[int, set] = {}

    def sh(i):
        if i not in cache:
            cache[i] = shingle_set(docs[i])
        return cache[i]

    return np.array([len(sh(a) & sh(b)) / max(1, len(sh(a) | sh(b))) for a, b in pairs])


def prf(pred: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
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


def ours_dedup(path: Path, out: Path, tmp: Path) -> tuple[float, dict[int, int]]:
    """The MinHashDedup step over the file: read+collect, sync, read+apply+write. -> (seconds, doc -> cluster)."""
    t0 = cpu()
    step = MinHashDedup(
        MinHashConfig(bands=BANDS, rows=ROWS, ngram=NGRAM, threshold=THRESHOLD), StepContext(Sharding(1, 1), 0, tmp)
    )
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            step.collect(Doc(make_gid(0, i), json.loads(line)["text"], "webpages"))
    step.sync(Comm(None, 0, 1))
    with open(path, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as w:
        for i, line in enumerate(f):
            rec = json.loads(line)
            if step.apply(Doc(make_gid(0, i), rec["text"], "webpages")) is None:
                w.write(json.dumps(rec) + "\n")
    dt = cpu() - t0
    nodes, root = step.clusters
    return dt, dict(zip((nodes & 0xFFFFFFFF).tolist(), root.tolist()))


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


def datatrove_dedup(corpus_dir: Path, work: Path) -> tuple[float, dict[int, int], dict[str, float]]:
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

    # datatrove's JsonlReader/JsonlWriter need orjson; both sides use the standard json module here.
    def read(data, rank=0, world_size=1):
        with open(corpus_dir / "docs.jsonl", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                yield Document(text=rec["text"], id=rec["id"])

    def write(data, rank=0, world_size=1):
        (work / "out").mkdir(parents=True, exist_ok=True)
        with open(work / "out" / f"{rank:05d}.jsonl", "w", encoding="utf-8") as f:
            for doc in data:
                f.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
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
                    save_cluster_id=True,
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
    raw = (work / "remove" / "000000.clusters").read_bytes() if (work / "remove" / "000000.clusters").exists() else b""
    pairs = np.frombuffer(raw, dtype="<u4").reshape(-1, 2)
    return sum(times.values()), {int(d): int(c) for d, c in pairs}, times


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


def same_cluster(clusters: dict[int, int], pairs: list[tuple[int, int]]) -> np.ndarray:
    return np.array([a in clusters and b in clusters and clusters[a] == clusters[b] for a, b in pairs])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--planted", type=int, default=2000)
    ap.add_argument("--random-pairs", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.disable(logging.WARNING)

    t0 = time.perf_counter()
    docs, planted = build_corpus(args.docs, args.planted, args.seed)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    rng = random.Random(args.seed + 1)
    pairs = planted + [tuple(sorted(rng.sample(range(len(docs)), 2))) for _ in range(args.random_pairs)]
    jac = ground_truth(docs, pairs)
    truth = jac >= THRESHOLD
    print(
        f"corpus: {len(docs)} docs, {mb:.1f} MB, {len(planted)} planted pairs; built in {time.perf_counter() - t0:.0f}s",
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
            "planted_pairs": len(planted),
            "random_pairs": args.random_pairs,
            "positives": int(truth.sum()),
            "jaccard_threshold": THRESHOLD,
        },
        "params": {
            "ngram": NGRAM,
            "bands": BANDS,
            "rows": ROWS,
            "num_perm": BANDS * ROWS,
            "our_verify_threshold": THRESHOLD,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "corpus").mkdir()
        path = tmp / "corpus" / "docs.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i, text in enumerate(docs):
                f.write(json.dumps({"id": str(i), "text": text}) + "\n")
        (tmp / "ours").mkdir()
        t_ours, ours_clusters = ours_dedup(path, tmp / "ours.jsonl", tmp / "ours")
        t_dt, dt_clusters, dt_times = datatrove_dedup(tmp / "corpus", tmp / "dt")
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
        "ours": {**rate(t_ours), **prf(same_cluster(ours_clusters, pairs), truth)},
        "datatrove": {
            **rate(t_dt),
            **prf(same_cluster(dt_clusters, pairs), truth),
            "stage_seconds": {k: round(v, 2) for k, v in dt_times.items()},
        },
    }
    results["dedup"]["speedup"] = round(t_dt / t_ours, 2)
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

    results["wall_seconds_total"] = round(time.perf_counter() - t0, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    d, s, r = results["dedup"], results["signatures"], results["rules"]
    print(f"\n{len(docs):,} docs, {mb:.1f} MB, one core; near-dup truth: exact Jaccard >= {THRESHOLD} on 5-shingles")
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
