"""Ring attention on CPU gloo ranks: peak memory per rank against T/S, and per-rank balance (issue 13).

memory   one attention forward + backward on each of S ranks at T/S = 1K..8K tokens, ours (fused
         block kernels, zigzag) against the implementation this replaced (per-block fp32 matmuls
         that materialize the (T/S)^2 score matrices), loaded from git at BASELINE. Each
         configuration runs in fresh processes, warmed up by one call at 64 tokens; a rank's peak is
         its peak RSS (ru_maxrss) minus its RSS just before the call, so it counts what the
         attention allocates.
balance  per-rank CPU time of every ring step's kernel calls (thread CPU time, which a shared
         machine's descheduling does not inflate), zigzag against contiguous with the same
         kernels; median of --repeats runs.

    python bench/ring_attention.py [--memory] [--balance] [--ranks 2] [--heads 2] [--head-dim 64]

gpu_long_context() is the 32K check for `make gpu-check`: a 1B-class model's training step at 32K
tokens on one GPU (tokens/s, peak memory).
"""

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zhinao.longctx.block_kernels import CpuFlashKernel
from zhinao.longctx.sequence_parallel import init_sequence_parallel, ring_attention
from zhinao_k8s.runner.local import free_port

RESULTS = Path(__file__).parent / "results" / "ring_attention.json"
BASELINE = "5a79579"
"""The commit whose ring attention (plain fp32 matmuls per block, contiguous shards) is compared."""
SHARD_LENGTHS = (1024, 2048, 4096, 8192)


def baseline_module(workdir: Path):
    """The sequence_parallel module as it was at BASELINE, importable under another name."""
    source = subprocess.run(
        ["git", "show", f"{BASELINE}:zhinao/longctx/sequence_parallel.py"],
        cwd=Path(__file__).parent.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = workdir / "baseline_ring.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_ring", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def _inputs(shard_len: int, heads: int, head_dim: int, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [torch.randn(1, heads, shard_len, head_dim, requires_grad=True) for _ in range(3)]


# ------------------------------------------------------------------------------------- memory


def _memory_worker(rank, world, port, out_dir, impl, shard_len, heads, head_dim):
    _init(rank, world, port)
    q, k, v = _inputs(shard_len, heads, head_dim, seed=rank)
    dout = torch.randn_like(q)
    if impl == "baseline":
        module = baseline_module(Path(out_dir))
        attention = module.ring_attention
        sp = module.init_sequence_parallel(world)
    else:
        attention = ring_attention
        sp = init_sequence_parallel(world)
    # A small call first: the first call pages in kernel code and sets up allocator arenas.
    attention(*(t[:, :, :64].detach().requires_grad_() for t in (q, k, v)), sp=sp).backward(dout[:, :, :64])
    dist.barrier()
    before = psutil.Process().memory_info().rss
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    attention(q, k, v, sp=sp).backward(dout)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record = {"rank": rank, "peak_bytes": peak - before, "seconds": seconds, "floor_bytes": peak_before - before}
    Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def measure_memory(world: int, heads: int, head_dim: int) -> list[dict]:
    rows = []
    for shard_len in SHARD_LENGTHS:
        row = {"shard_len": shard_len, "seq_len": shard_len * world}
        for impl in ("baseline", "ours"):
            with tempfile.TemporaryDirectory() as tmp:
                mp.spawn(
                    _memory_worker,
                    args=(world, free_port(), tmp, impl, shard_len, heads, head_dim),
                    nprocs=world,
                    join=True,
                )
                ranks = [json.loads(Path(tmp, f"rank-{r}.json").read_text()) for r in range(world)]
            row[impl] = {
                "peak_mib_max_rank": max(r["peak_bytes"] for r in ranks) / 2**20,
                "peak_mib_per_rank": [round(r["peak_bytes"] / 2**20, 1) for r in ranks],
                "seconds_max_rank": max(r["seconds"] for r in ranks),
                # a peak reached before the call (imports) would hide a smaller one during it
                "floor_mib_max_rank": max(r["floor_bytes"] for r in ranks) / 2**20,
            }
            print(f"T/S={shard_len} {impl}: {row[impl]}", flush=True)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ balance


class TimedKernel:
    """The CPU flash kernel, recording the thread CPU time of each call in call order."""

    def __init__(self):
        self.inner = CpuFlashKernel()
        self.forward_s: list[float] = []
        self.backward_s: list[float] = []

    def forward(self, *args, **kwargs):
        start = time.thread_time()
        result = self.inner.forward(*args, **kwargs)
        self.forward_s.append(time.thread_time() - start)
        return result

    def backward(self, *args, **kwargs):
        start = time.thread_time()
        result = self.inner.backward(*args, **kwargs)
        self.backward_s.append(time.thread_time() - start)
        return result


def _balance_worker(rank, world, port, out_dir, sharding, shard_len, heads, head_dim, repeats):
    _init(rank, world, port)
    sp = init_sequence_parallel(world, sharding=sharding)
    runs = []
    for repeat in range(repeats):
        q, k, v = _inputs(shard_len, heads, head_dim, seed=repeat)
        kernel = TimedKernel()
        dist.barrier()
        ring_attention(q, k, v, sp=sp, kernel=kernel).backward(torch.ones_like(q))
        # A rank calls the kernel only at steps with work; with contiguous shards rank r works at
        # steps 0..r (its own shard first, then earlier ranks'), so call i is step i.
        pad = [0.0] * (world - len(kernel.forward_s))
        runs.append([f + b for f, b in zip(kernel.forward_s + pad, kernel.backward_s + pad)])
    per_step = [statistics.median(run[s] for run in runs) for s in range(world)]
    Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(per_step))
    dist.destroy_process_group()


def measure_balance(world: int, shard_len: int, heads: int, head_dim: int, repeats: int) -> dict:
    result = {"ranks": world, "shard_len": shard_len, "repeats": repeats}
    for sharding in ("contiguous", "zigzag"):
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(
                _balance_worker,
                args=(world, free_port(), tmp, sharding, shard_len, heads, head_dim, repeats),
                nprocs=world,
                join=True,
            )
            steps = [json.loads(Path(tmp, f"rank-{r}.json").read_text()) for r in range(world)]
        totals = [sum(s) for s in steps]
        per_step = [[s[i] for s in steps] for i in range(world)]
        # None where a rank idles through a step (contiguous: ranks before the block's owner)
        worst_step = None if min(map(min, per_step)) == 0 else max(max(x) / min(x) - 1 for x in per_step)
        result[sharding] = {
            "seconds_per_rank_step": [[round(x, 4) for x in s] for s in steps],
            "seconds_per_rank": [round(t, 3) for t in totals],
            "spread_total": max(totals) / min(totals) - 1,
            "spread_worst_step": worst_step,
            "efficiency": sum(totals) / (world * max(totals)),
        }
        print(f"{sharding}: {result[sharding]}", flush=True)
    return result


# ------------------------------------------------------------------------------------ GPU check


def gpu_long_context(seq_len: int = 32768, *, steps: int = 3, device: str = "cuda", model_config=None) -> dict:
    """Tokens/s and peak memory of a 1B-class 360Zhinao-shaped model's training step at seq_len on one
    device (bf16 autocast, flash attention, activation checkpointing). The anchor the issue names is
    MPT-1B at 12,025 tokens/s at 32K. model_config lets a CPU test run the same code at toy size."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from zhinao.model import attention_implementation

    config = model_config or Qwen2Config(
        vocab_size=158_464,  # the 360Zhinao vocabulary
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=seq_len,
        rope_theta=5e7,
        use_cache=False,
        attn_implementation=attention_implementation("auto"),
    )
    if device == "cuda":  # gpu-check runs this after its pretrain line: count this step's peak only
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = Qwen2ForCausalLM(config).to(device)
    model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    ids = torch.randint(0, config.vocab_size, (1, seq_len), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16)
    times = []
    for _ in range(steps + 1):  # the first step warms up kernels and allocator
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {
        "seq_len": seq_len,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_second": seq_len * steps / sum(times[1:]),
        "peak_gib": peak,
        "anchor": "MPT-1B 12,025 tokens/s at 32K",
    }


def tiny_config():
    """The toy model the CPU dry run trains: gpu_long_context's code path at 64 tokens."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        use_cache=False,
        attn_implementation="sdpa",
    )


def long_context_check(dry_run: bool) -> dict:
    """`make gpu-check`'s 32K line (gpu_long_context); the dry run takes the same path on CPU with
    tiny_config() at 64 tokens."""
    if not dry_run:
        return gpu_long_context()
    return gpu_long_context(64, steps=1, device="cpu", model_config=tiny_config())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory", action="store_true", help="only the memory table")
    parser.add_argument("--balance", action="store_true", help="only the balance table")
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the memory runs")
    parser.add_argument("--balance-ranks", type=int, default=4)
    parser.add_argument("--balance-shard-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    args = parser.parse_args()
    both = not (args.memory or args.balance)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(
        {
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU, torch {torch.__version__}",
            "load_average": os.getloadavg(),
            "baseline": BASELINE,
        }
    )
    if args.memory or both:
        results["memory"] = {
            "ranks": args.ranks,
            "heads": args.heads,
            "head_dim": args.head_dim,
            "rows": measure_memory(args.ranks, args.heads, args.head_dim),
        }
    if args.balance or both:
        results["balance"] = measure_balance(
            args.balance_ranks, args.balance_shard_len, args.heads, args.head_dim, args.repeats
        )
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
