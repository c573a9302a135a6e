"""Pretraining throughput: our pretrain stage against a plain Hugging Face `Trainer`, in one run.

Same model (the tiny 360Zhinao config), same packed token sequences, same batch, same optimizer
settings, both with checkpointing on; ours also serves Prometheus metrics and writes the JSONL log.
Wall-clock tokens/s of the training call is compared (model and data set-up excluded for both), and
tokens per CPU second of the process (ours counts its whole stage: set-up, export and the loss plot
too). The two alternate for `--rounds` rounds and the medians are reported. On a shared machine the
per-CPU figure is the one to read, with `--threads 1`: with more intra-op threads than free cores,
torch's thread pool spends CPU time waiting at its barriers, which measures the neighbours.

    python bench/train_throughput.py [--steps 60] [--seq-len 256] [--micro-batch 8] [--rounds 3] [--threads 1]
"""

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from zhinao.artifacts import StageOutput
from zhinao.config.pretrain import PretrainParams
from zhinao.config.runtime import StageRuntime
from zhinao.data.packing import pack_source
from zhinao.data.token_shards import Shard, TokenIndex, shard_bytes
from zhinao.model import build_config, build_model
from zhinao.tokenizer import to_transformers, train_bpe

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"


def corpus() -> list[str]:
    import importlib
    import inspect

    texts = []
    for name in (
        "json",
        "os",
        "re",
        "collections",
        "itertools",
        "functools",
        "pathlib",
        "subprocess",
        "threading",
        "logging",
        "argparse",
        "typing",
        "asyncio",
        "email",
        "http.client",
        "unittest",
        "decimal",
    ):
        for _, obj in inspect.getmembers(importlib.import_module(name)):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 100:
                texts.append(doc)
    return texts


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "cpu",
    )
    return (
        f"{platform.machine()}, {os.cpu_count()} cores ({model}), no GPU"
        if not torch.cuda.is_available()
        else f"{torch.cuda.get_device_name()}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(root: Path, seq_len: int) -> tuple[Path, np.ndarray, int]:
    texts = corpus()
    tok = to_transformers(train_bpe(texts, vocab_size=4096))
    tok_dir = root / "tokenizer"
    tok.save_pretrained(tok_dir)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    seqs = pack_source(ids, seq_len=seq_len, eod_id=tok.convert_tokens_to_ids("<eod>"))
    packed = StageOutput.at(f"file://{root / 'packed'}")
    key = packed.put_token_shard("bench-r00000-00000", shard_bytes(seqs))
    packed.write_tokens_index(TokenIndex(seq_len=seq_len, vocab_size=len(tok), shards=[Shard(key, "bench", len(seqs))]))
    return tok_dir, seqs, len(tok)


def run_ours(root: Path, tok_dir: Path, data_root: Path, params: PretrainParams) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) of our pretrain stage, in this process."""
    # A fixed peak skips the start-up matmul probe, which would only add CPU time to our side.
    os.environ.update(
        ZHINAO_WORKDIR=str(root / "ours-work"),
        ZHINAO_METRICS_PORT=str(free_port()),
        ZHINAO_METRICS_ADDR="127.0.0.1",
        ZHINAO_PEAK_FLOPS="1e11",
    )
    from zhinao.stages import pretrain

    rt = StageRuntime(
        pipeline="bench",
        stage="pretrain",
        kind="pretrain",
        params=params.to_wire(),
        inputs={"tokenizer": f"file://{tok_dir}", "tokens": f"file://{data_root / 'packed'}"},
        output=f"file://{root / 'ours'}",
    )
    cpu = time.process_time()
    pretrain.run(rt, params)
    cpu = time.process_time() - cpu  # includes set-up, HF export and the loss plot: against us
    records = StageOutput.at(f"file://{root / 'ours'}").metrics_records()
    steps = [r for r in records if r.get("event") == "step"]
    checkpoints = [r for r in records if r.get("event") == "checkpoint"]
    # From the start of the first step to the end of the final checkpoint (metrics served and logged throughout).
    loop_seconds = checkpoints[-1]["ts"] - (steps[0]["ts"] - steps[0]["step_seconds"])
    tokens = sum(r["tokens"] for r in steps)
    return tokens / loop_seconds, tokens / cpu


def run_hf_trainer(root: Path, seqs: np.ndarray, vocab: int, params: PretrainParams) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) of a plain transformers.Trainer."""
    from transformers import Trainer, TrainingArguments

    class Packed(torch.utils.data.Dataset):
        def __len__(self):
            return len(seqs)

        def __getitem__(self, i):
            ids = torch.from_numpy(seqs[i].astype(np.int64))
            return {"input_ids": ids, "labels": ids}

    config = build_config(params.model_size, vocab_size=vocab, max_position_embeddings=4096, attention="sdpa")
    model = build_model(config, seed=params.seed)
    args = TrainingArguments(
        output_dir=str(root / "hf"),
        per_device_train_batch_size=params.micro_batch_size,
        max_steps=params.max_steps,
        learning_rate=params.lr,
        lr_scheduler_type="cosine",
        warmup_steps=params.warmup_steps,
        weight_decay=params.weight_decay,
        adam_beta1=params.adam_beta1,
        adam_beta2=params.adam_beta2,
        adam_epsilon=params.adam_eps,
        max_grad_norm=params.grad_clip,
        save_steps=params.checkpoint_every,
        save_total_limit=params.keep_checkpoints,
        logging_steps=params.log_every,
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=params.seed,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Packed())
    cpu = time.process_time()
    result = trainer.train()  # its periodic checkpoints included, as ours are
    cpu = time.process_time() - cpu
    tokens = params.max_steps * params.micro_batch_size * params.seq_len
    return tokens / result.metrics["train_runtime"], tokens / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--rounds", type=int, default=3, help="Alternating runs of each; the medians are reported.")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads, both sides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = PretrainParams(
        model_size=args.model_size,
        seq_len=args.seq_len,
        micro_batch_size=args.micro_batch,
        max_steps=args.steps,
        warmup_steps=max(1, args.steps // 10),
        checkpoint_every=max(1, args.steps // 3),
        log_every=1,
    )
    hf_runs, our_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir, seqs, vocab = prepare(Path(tmp), args.seq_len)
        # Alternate the two so that background load on a shared machine hits both alike.
        for round_ in range(args.rounds):
            hf_runs.append(run_hf_trainer(Path(tmp) / f"hf-{round_}", seqs, vocab, params))
            our_runs.append(run_ours(Path(tmp) / f"ours-{round_}", tok_dir, Path(tmp), params))
            print(f"round {round_}: HF {hf_runs[-1]}, ours {our_runs[-1]} (tokens/s, tokens/CPU s)", flush=True)
    hf, ours = (float(np.median([r[0] for r in runs])) for runs in (hf_runs, our_runs))
    hf_cpu, ours_cpu = (float(np.median([r[1] for r in runs])) for runs in (hf_runs, our_runs))
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "config": {
            "model": args.model_size,
            "seq_len": args.seq_len,
            "micro_batch": args.micro_batch,
            "steps": args.steps,
            "checkpoint_every": params.checkpoint_every,
            "threads": args.threads,
            "rounds": args.rounds,
        },
        "ours_tokens_per_s": round(ours, 1),
        "hf_trainer_tokens_per_s": round(hf, 1),
        "ratio": round(ours / hf, 3),
        "ours_tokens_per_cpu_s": round(ours_cpu, 1),
        "hf_trainer_tokens_per_cpu_s": round(hf_cpu, 1),
        "cpu_ratio": round(ours_cpu / hf_cpu, 3),
        "runs": {
            "ours": [[round(x, 1) for x in r] for r in our_runs],
            "hf_trainer": [[round(x, 1) for x in r] for r in hf_runs],
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ours (zhinao pretrain stage)   {ours:10,.0f} tokens/s")
    print(f"Hugging Face Trainer           {hf:10,.0f} tokens/s")
    print(f"ratio ours / HF Trainer        {ours / hf:10.2f}x   (wall clock, median of {args.rounds})")
    print(
        f"per CPU second: ours {ours_cpu:,.0f}, HF Trainer {hf_cpu:,.0f}, ratio {ours_cpu / hf_cpu:.2f}x   -> {RESULTS}"
    )


if __name__ == "__main__":
    main()
