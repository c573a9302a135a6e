"""Tokenize CPU time per ablation run: each run tokenizing its recipe's mixture (before) against the
preparation tokenizing it once per recipe and every run opening the token shards (now).

The mixture is the demo ablation's (operator/zhinao_k8s/examples/ablation-demo.yaml): `proxy.tokens`
of demo-corpus documents, a 2,048-token BPE tokenizer, sequences of 128. Before, a run's pretrain
stage ran `tokenize_share` + `merge_parts` over the mixture into its own output; now the
preparation packs the mixture once (`zhinao.ablation.mixture_tokens`, on its ranks) and a run only opens the stream (`open_token_stream`:
the index, no shard is read before the first batch). CPU seconds of this process, median of
`--rounds`; the tokenizer single-threaded (RAYON_NUM_THREADS=1), as a 1-CPU run's is.

    python bench/ablation_tokenize.py [--rounds 3]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from zhinao.ablation.mixture import measure, write_parts  # noqa: E402
from zhinao.ablation.prepare import iter_records  # noqa: E402
from zhinao.artifacts import StageOutput  # noqa: E402
from zhinao.config.stream import TokenStreamParams  # noqa: E402
from zhinao.data.demo_corpus import build_demo_corpus  # noqa: E402
from zhinao.data.token_stream import open_token_stream  # noqa: E402
from zhinao.data.tokenize_shards import merge_parts, tokenize_share  # noqa: E402
from zhinao.storage import open_store  # noqa: E402
from zhinao.tokenizer import to_transformers, train_bpe  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ablation_tokenize.json"
TOKENS, SEQ_LEN, VOCAB, RECIPES, SEEDS = 307_200, 128, 2048, 4, 3  # the demo ablation's proxy and fan-out


def mixture(root: Path):
    """The demo corpus, its tokenizer, and up to `TOKENS` tokens of its documents under train/docs/."""
    build_demo_corpus(f"file://{root}")
    docs = list(iter_records(open_store(f"file://{root}/corpus")))
    tokenizer = to_transformers(train_bpe((d["text"] for d in docs), vocab_size=VOCAB))
    lengths, _ = measure(tokenizer, docs, seed=0)
    taken, total = [], 0
    for i in range(3 * len(docs)):  # cycled, each document only where it still fits the budget
        if total + int(lengths[i % len(docs)]) <= TOKENS:
            taken.append(docs[i % len(docs)])
            total += int(lengths[i % len(docs)])
    train = open_store(f"file://{root}/train")
    write_parts(train, "docs", taken)
    return tokenizer, train, total


def cpu(fn) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer, train, tokens = mixture(root)
        prepared = StageOutput(train)
        before, now = [], []
        for r in range(args.rounds):
            # before: what each run's pretrain stage did, into its own output
            run_output = StageOutput(open_store(f"file://{root}/run-{r}"))

            def tokenize_in_run(out=run_output):
                tokenize_share(train, tokenizer, out, seq_len=SEQ_LEN, params=TokenStreamParams(), rank=0, world_size=1)
                merge_parts(out, world_size=1, where=train.uri)

            before.append(cpu(tokenize_in_run))
            # now: the preparation packed the mixture once, in the same stream format; a run opens it
            if r == 0:
                tokenize_share(
                    train, tokenizer, prepared, seq_len=SEQ_LEN, params=TokenStreamParams(), rank=0, world_size=1
                )
                merge_parts(prepared, world_size=1, where=train.uri)

            def open_stream(r=r):
                open_token_stream(
                    prepared,
                    root / f"cache-{r}",
                    seq_len=SEQ_LEN,
                    seed=r,
                    rank=0,
                    world_size=1,
                    params=TokenStreamParams(),
                ).close()

            now.append(cpu(open_stream))
    per_run_before, per_run_now = statistics.median(before), statistics.median(now)
    runs = RECIPES * SEEDS
    result = {
        "date": date.today().isoformat(),
        "machine": "2-core shared x86_64, no GPU",
        "mixture_tokens": tokens,
        "seq_len": SEQ_LEN,
        "rounds": args.rounds,
        "cpu_seconds_per_run_before": round(per_run_before, 3),
        "cpu_seconds_per_run_now": round(per_run_now, 4),
        "demo_runs": runs,
        "demo_cpu_seconds_before": round(runs * per_run_before, 2),
        "demo_cpu_seconds_now": round(RECIPES * per_run_before + runs * per_run_now, 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
