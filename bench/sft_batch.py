"""SFT micro-batch build time as the packed data set grows 10x: the position ids of the micro-batch's
rows only (ours) against those of every row, then indexed (before, issue 12), in one run.

    python bench/sft_batch.py [--rows 8000] [--max-len 1024] [--micro-batch 4]
"""

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np

from zhinao.data.sft_packing import PAD_DOC, Packed, position_ids

RESULTS = Path(__file__).parent / "results" / "sft_batch.json"


def synthetic(rows: int, max_len: int, seed: int = 0) -> Packed:
    """`rows` packed rows of 2-6 examples each and a padded tail (only doc_ids matter here)."""
    rng = np.random.default_rng(seed)
    doc_ids = np.full((rows, max_len), PAD_DOC, dtype=np.int64)
    for r in range(rows):
        cuts = np.sort(rng.choice(np.arange(1, max_len - 8), size=int(rng.integers(1, 6)), replace=False))
        doc_ids[r, : max_len - 8] = np.searchsorted(cuts, np.arange(max_len - 8), side="right")
    zeros = np.zeros_like(doc_ids)
    return Packed(input_ids=zeros, labels=zeros, doc_ids=doc_ids, skipped=0)


def timed(fn, repeats: int) -> float:
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - began) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=4)
    args = ap.parse_args()
    rows = np.arange(args.micro_batch)
    result = {"date": date.today().isoformat(), "max_len": args.max_len, "micro_batch": args.micro_batch}
    for n in (args.rows, args.rows * 10):
        packed = synthetic(n, args.max_len)
        for mode in ("naive", "document"):
            ours = timed(lambda: packed.position_ids(mode, rows), 20)  # noqa: B023 (called right here)
            before = timed(lambda: position_ids(packed.doc_ids, mode)[rows], 1)  # noqa: B023
            result[f"{mode}_{n}"] = {"ours_s": ours, "before_s": before}
            print(f"{mode:9s} {n:7d} rows: ours {ours * 1e3:8.3f} ms   before {before * 1e3:10.1f} ms", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
