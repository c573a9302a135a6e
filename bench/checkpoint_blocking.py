"""Checkpoint blocking time: a background (asynchronous) save against a synchronous one, in one run.

What runs: a 360Zhinao-architecture model of ~134M parameters (hidden 768, 12 layers, vocab 32,000)
on CPU, with its AdamW state populated by one training step, saved through the training session's
own path (`TrainingSession.save_checkpoint`: engine staging, torch/DCP files, sha256 manifest,
upload, `latest` pointer, pruning) to a real S3 server: SeaweedFS `weed mini`, started here as
the tests start it. Each round saves once synchronously and once in the background; for the
background save it records the time training was held up (the host-memory staging; under
DeepSpeed, its own save to local disk) and the time until the commit.

    python bench/checkpoint_blocking.py [--rounds 3] [--engine ddp|fsdp|deepspeed]

`deepspeed` is ZeRO-2 on one gloo rank, as DeepSpeed runs in-process.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import Qwen2Config

from zhinao.config.pretrain import PretrainParams
from zhinao.config.runtime import StageRuntime
from zhinao.model import build_model
from zhinao_k8s.runner.local import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # servers.seaweedfs: the S3 server the tests use
RESULTS = ROOT / "bench" / "results" / "checkpoint_blocking.json"


def bench_model() -> torch.nn.Module:
    config = Qwen2Config(
        vocab_size=32_000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return build_model(config, seed=0)


def single_process_group() -> None:
    """FSDP2, DCP and DeepSpeed want a process group even for one rank."""
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed insists on a launcher's variable
    port = free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def run(rounds: int, engine_kind: str) -> dict:
    from servers.seaweedfs import SeaweedS3

    from zhinao.training.session import TrainingSession

    with SeaweedS3() as server, tempfile.TemporaryDirectory() as work:
        os.environ.update(server.env() | {"ZHINAO_WORKDIR": work})
        if engine_kind in ("fsdp", "deepspeed"):
            single_process_group()
        rt = StageRuntime(
            pipeline="bench", stage="ckpt", kind="pretrain", output=f"s3://bench-{uuid.uuid4().hex[:8]}/run"
        )
        session = TrainingSession(rt, keep_checkpoints=2)
        model = bench_model()
        n_params = sum(p.numel() for p in model.parameters())
        params = PretrainParams(
            engine=engine_kind,
            zero_stage=2 if engine_kind == "deepspeed" else 0,
            warmup_steps=1,
            max_steps=1000,
            activation_checkpointing="off",
            loss_chunk_tokens=0,
        )
        engine = session.build_engine(model, params, warmup=1, total=1000)
        batch = torch.randint(0, 32_000, (1, 64), generator=torch.Generator().manual_seed(0))
        engine.train_step([batch])  # AdamW's moments exist from here: the state a real save holds

        records, step = [], 0
        for r in range(rounds):
            step += 1
            started, cpu = time.perf_counter(), time.process_time()
            session.save_checkpoint(engine, step, {"step": step}, background=False)
            sync, sync_cpu = time.perf_counter() - started, time.process_time() - cpu

            engine.train_step([batch])
            step += 1
            started, cpu = time.perf_counter(), time.process_time()
            blocking = session.save_checkpoint(engine, step, {"step": step}, background=True)
            blocking_cpu = time.process_time() - cpu  # no save was in flight: this is the staging alone
            session.finish_checkpoints()
            background_total = time.perf_counter() - started
            records.append(
                {
                    "round": r + 1,
                    "sync_s": sync,
                    "sync_cpu_s": sync_cpu,
                    "async_blocking_s": blocking,
                    "async_blocking_cpu_s": blocking_cpu,
                    "async_total_s": background_total,
                    "load_average": os.getloadavg()[0],
                }
            )
            print(
                f"round {r + 1}: synchronous {sync:.2f}s ({sync_cpu:.2f} CPU s) | background: blocking "
                f"{blocking:.3f}s ({blocking_cpu:.2f} CPU s), committed after {background_total:.2f}s | "
                f"blocking/sync {blocking / sync:.1%} wall, {blocking_cpu / sync_cpu:.1%} CPU | "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        checkpoint_bytes = sum(
            size for key, size in session.out.sizes().items() if key.startswith(f"checkpoints/step-{step:08d}/")
        )
        session.close()

    def median(key: str) -> float:
        return statistics.median(r[key] for r in records)

    sync_med, blocking_med = median("sync_s"), median("async_blocking_s")
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared; load average {os.getloadavg()[0]:.1f})",
        "torch": torch.__version__,
        "engine": engine_kind,
        "parameters": n_params,
        "checkpoint_bytes": checkpoint_bytes,
        "rounds": records,
        "median_sync_s": sync_med,
        "median_async_blocking_s": blocking_med,
        "median_async_total_s": median("async_total_s"),
        "blocking_share_of_sync": blocking_med / sync_med,
        "blocking_share_of_sync_cpu": median("async_blocking_cpu_s") / median("sync_cpu_s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", choices=("ddp", "fsdp", "deepspeed"), default="ddp")
    args = parser.parse_args()
    result = run(args.rounds, args.engine)
    print(json.dumps(result, indent=2))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.engine] = result
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
