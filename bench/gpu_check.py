"""`make gpu-check`: pretrain the 1.8B ablation model at 4K in bf16 on one GPU and report what it did.

The model, engine, activation checkpointing and chunked loss are the pretrain stage's own
(`build_engine` with the stage's defaults: bf16, flash-attn when installed). A fixed number of
optimizer steps run on random tokens; the first `--warmup` are excluded from the timing. Prints
tokens/s, MFU (6N + 12LdT FLOPs per token against the device's peak bf16 FLOP/s) and peak memory
as one JSON line. Then the named `CHECKS` run in order, each printing its lines (a 1B-class model's
step at 32K tokens: `ring_attention.py`, anchor MPT-1B 12,025 tokens/s; a ReMax step per installed
rollout engine: `remax_check.py`; one step of every stage kind in bf16: `stage_steps.py`); their
figures join the JSON written to --out under their names, and the exit code is non-zero if the loss
did not fall or any check failed.

    python bench/gpu_check.py                 # the GPU check (1.8b, 4096 tokens, 12 steps)
    python bench/gpu_check.py --dry-run       # the same path on CPU with the tiny model (tests)
"""

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from remax_check import remax_check
from ring_attention import long_context_check
from stage_steps import stage_steps

from zhinao.config.pretrain import PretrainParams
from zhinao.distributed import DistEnv
from zhinao.metrics import flops_per_token, peak_flops
from zhinao.model import build_config, build_model, matmul_params
from zhinao.training.engine_builder import build_engine


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, fp32: checks the path, not speed.")
    parser.add_argument("--size", default="1.8b")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="Steps not timed (allocator and kernel warm-up).")
    parser.add_argument("--out", type=Path, help="Also write the result JSON here.")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.size, args.seq_len, args.micro_batch, args.steps, args.warmup = "tiny", 64, 2, 3, 1
    if args.warmup >= args.steps:
        parser.error("--warmup must be below --steps")
    return args


def run(args: argparse.Namespace) -> dict:
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        raise SystemExit("no CUDA device: run with --dry-run to check the CPU path")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls left over (optimizer, norms) use TF32
        torch.backends.cudnn.allow_tf32 = True
    config = build_config(args.size, vocab_size=512 if args.size == "tiny" else None, attention="auto")
    model = build_model(config, seed=0)
    params = PretrainParams(
        model_size=args.size,
        seq_len=args.seq_len,
        micro_batch_size=args.micro_batch,
        max_steps=args.steps,
        warmup_steps=1,
        precision="bf16" if cuda else "fp32",
    )
    engine = build_engine(
        model, params, env=DistEnv(rank=0, world_size=1, local_rank=0), device=device, warmup=1, total=args.steps
    )
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len), generator=gen).to(device)
    losses, timed = [], 0.0
    for step in range(args.steps):
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        loss, _ = engine.train_step([batch])
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            timed += time.perf_counter() - began
        losses.append(loss)
    tokens_per_s = args.micro_batch * args.seq_len * (args.steps - args.warmup) / timed
    fpt = flops_per_token(
        n_params=matmul_params(model),
        n_layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        seq_len=args.seq_len,
    )
    peak, how = peak_flops(device)
    return {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu (dry run)",
        "model": args.size,
        "params": sum(p.numel() for p in model.parameters()),
        "attention": config._attn_implementation,
        "engine": type(engine).__name__,
        "seq_len": args.seq_len,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * fpt / peak,
        "peak_flops_source": how,
        "peak_memory_gb": (
            torch.cuda.max_memory_allocated(device)
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        / 1e9,
    }


def stage_kinds(args: argparse.Namespace) -> tuple[dict, bool]:
    """One step of every stage kind in bf16 (on CPU for --dry-run): `<kind>: ok` or the error."""
    verdicts, ok = stage_steps()
    for kind, verdict in verdicts.items():
        print(f"stage {kind}: {verdict}", flush=True)
    return verdicts, ok


def long_context(args: argparse.Namespace) -> tuple[dict, bool]:
    """A 1B-class model's training step at 32K tokens (ring_attention.py): figures, no pass mark of its own."""
    figures = long_context_check(args.dry_run)
    print(json.dumps({"long_context": figures}), flush=True)
    return figures, True


def remax(args: argparse.Namespace) -> tuple[dict, bool]:
    """A ReMax step per installed rollout engine (remax_check.py): figures, no pass mark of its own."""
    figures = remax_check(args.dry_run)
    print(json.dumps({"remax": figures}), flush=True)
    return figures, True


CHECKS: list[tuple[str, Callable[[argparse.Namespace], tuple[dict, bool]]]] = [
    ("long_context", long_context),
    ("remax", remax),
    ("stages", stage_kinds),
]
"""Run after the throughput part, in order: name -> (its figures for the result JSON, whether it passed)."""


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = run(args)
    print(json.dumps(result), flush=True)
    finite = all(v == v for v in (result["loss_first"], result["loss_last"]))
    ok = finite and result["loss_last"] < result["loss_first"]
    for name, check in CHECKS:
        result[name], passed = check(args)
        ok = ok and passed
    if args.out:
        args.out.write_text(json.dumps(result) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
