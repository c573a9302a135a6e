"""Pretraining throughput: our pretrain stage, under each engine, against a plain Hugging Face `Trainer`.

Same model (the tiny 360Zhinao config), same packed token sequences, same batch, same optimizer
settings, both with checkpointing on; ours also serves Prometheus metrics and writes the JSONL log.
Ours runs once per engine in `--engines`: `ddp` (one process: the bare model, as the stage runs
without a process group) and `fsdp` (FSDP2 over a single-rank gloo group: every block a
`fully_shard` unit, its all-gathers, reduce-scatters and DCP checkpoints all running). Wall-clock
tokens/s of the training call is compared (model and data set-up excluded for both), and tokens
per CPU second of the process (ours counts its whole stage: set-up, export and the loss plot too).
The runs alternate for `--rounds` rounds and the medians are reported. On a shared machine the
per-CPU figure is the one to read: with more intra-op threads than free cores, torch's thread pool
spends CPU time waiting at its barriers, which measures the neighbours.

    python bench/train_throughput.py [--steps 60] [--seq-len 256] [--micro-batch 8] [--rounds 3] [--threads 1]
        [--engines ddp,fsdp]
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from zhinao.artifacts import StageOutput
from zhinao.config.pretrain import PretrainParams
from zhinao.config.runtime import StageRuntime
from zhinao.data.packing import pack_source
from zhinao.data.token_shards import Shard, TokenIndex, shard_bytes
from zhinao.model import build_config, build_model
from zhinao.tokenizer import to_transformers, train_bpe
from zhinao_k8s.runner.local import free_port

RESULTS = Path(__file__).parent / "results"


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


@contextlib.contextmanager
def environment(**values: str):
    """`values` set in os.environ while open, the earlier values back after: left set, a single-rank
    group's variables would make the next round's Trainer start a distributed run, and a metrics port
    would be reused by whatever runs next in this process."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def process_group(engine: str):
    """FSDP2 needs a process group even for one rank: a single-rank gloo one, as torchrun would
    set up (the stage's session only creates one for more than one rank)."""
    if engine != "fsdp":
        yield
        return
    rank_env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1"}
    with environment(**rank_env, LOCAL_RANK="0"):
        dist.init_process_group("gloo")
        try:
            yield
        finally:
            dist.destroy_process_group()


def run_ours(root: Path, tok_dir: Path, data_root: Path, params: PretrainParams) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) of our pretrain stage under `params.engine`, in this process."""
    # A fixed peak skips the start-up matmul probe, which would only add CPU time to our side.
    from zhinao.stages import pretrain

    rt = StageRuntime(
        pipeline="bench",
        stage="pretrain",
        kind="pretrain",
        params=params.to_wire(),
        inputs={"tokenizer": f"file://{tok_dir}", "tokens": f"file://{data_root / 'packed'}"},
        output=f"file://{root / 'ours'}",
    )
    run_env = environment(
        ZHINAO_WORKDIR=str(root / "ours-work"),
        ZHINAO_METRICS_PORT=str(free_port()),
        ZHINAO_METRICS_ADDR="127.0.0.1",
        ZHINAO_PEAK_FLOPS="1e11",
    )
    with run_env, process_group(params.engine):
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


def measure(
    *,
    steps: int,
    seq_len: int,
    micro_batch: int,
    model_size: str,
    rounds: int,
    threads: int,
    engines: list[str],
) -> dict:
    """Alternating rounds of the Trainer and ours under each engine; medians and every run."""
    torch.set_num_threads(threads)
    params = PretrainParams(
        model_size=model_size,
        seq_len=seq_len,
        micro_batch_size=micro_batch,
        max_steps=steps,
        warmup_steps=max(1, steps // 10),
        checkpoint_every=max(1, steps // 3),
        log_every=1,
    )
    runs: dict[str, list[tuple[float, float]]] = {"hf_trainer": [], **{e: [] for e in engines}}
    started = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir, seqs, vocab = prepare(Path(tmp), seq_len)
        # Alternate so that background load on a shared machine hits every side alike.
        for round_ in range(rounds):
            runs["hf_trainer"].append(run_hf_trainer(Path(tmp) / f"hf-{round_}", seqs, vocab, params))
            for engine in engines:
                ours = params.model_copy(update={"engine": engine})
                runs[engine].append(run_ours(Path(tmp) / f"{engine}-{round_}", tok_dir, Path(tmp), ours))
            print(f"round {round_} (tokens/s, tokens/CPU s): { ({k: v[-1] for k, v in runs.items()}) }", flush=True)
    medians = {k: [float(np.median([r[i] for r in v])) for i in (0, 1)] for k, v in runs.items()}
    hf_wall, hf_cpu = medians["hf_trainer"]
    return {
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_average": {"start": started, "end": os.getloadavg()},
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "config": {
            "model": model_size,
            "seq_len": seq_len,
            "micro_batch": micro_batch,
            "steps": steps,
            "checkpoint_every": params.checkpoint_every,
            "loss_chunk_tokens": params.loss_chunk_tokens,
            "threads": threads,
            "rounds": rounds,
        },
        "tokens_per_s": {k: round(v[0], 1) for k, v in medians.items()},
        "tokens_per_cpu_s": {k: round(v[1], 1) for k, v in medians.items()},
        "ratio_to_trainer": {e: round(medians[e][0] / hf_wall, 3) for e in engines},
        "cpu_ratio_to_trainer": {e: round(medians[e][1] / hf_cpu, 3) for e in engines},
        "runs": {k: [[round(x, 1) for x in r] for r in v] for k, v in runs.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--rounds", type=int, default=3, help="Alternating runs of each; the medians are reported.")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads, every side")
    ap.add_argument("--engines", default="ddp,fsdp", help="Our engines to run, comma-separated (ddp, fsdp)")
    ap.add_argument(
        "--out", type=Path, default=None, help="Result file (default: bench/results/train_throughput-<threads>t.json)"
    )
    args = ap.parse_args()
    result = measure(
        steps=args.steps,
        seq_len=args.seq_len,
        micro_batch=args.micro_batch,
        model_size=args.model_size,
        rounds=args.rounds,
        threads=args.threads,
        engines=args.engines.split(","),
    )
    out = args.out or RESULTS / f"train_throughput-{args.threads}t.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    hf_wall, hf_cpu = result["tokens_per_s"]["hf_trainer"], result["tokens_per_cpu_s"]["hf_trainer"]
    print(f"{'':28}{'tokens/s':>12}{'tokens/CPU s':>14}{'ratio/CPU s':>13}")
    print(f"{'Hugging Face Trainer':28}{hf_wall:12,.0f}{hf_cpu:14,.0f}{1.0:12.2f}x")
    for engine, cpu_ratio in result["cpu_ratio_to_trainer"].items():
        wall, cpu = result["tokens_per_s"][engine], result["tokens_per_cpu_s"][engine]
        print(f"{'ours, ' + engine:28}{wall:12,.0f}{cpu:14,.0f}{cpu_ratio:12.2f}x")
    print(f"(medians of {args.rounds} alternating rounds, {args.threads} thread(s)) -> {out}")


if __name__ == "__main__":
    main()
