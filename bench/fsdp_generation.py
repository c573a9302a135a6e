"""Rollout decoding under FSDP2: gather the whole policy once per generate call, or per token.

Two gloo ranks shard a small Qwen2 policy with the training engine (FSDPEngine). The `hf`
rollout engine decodes the same prompts both ways, with the same greedy tokens:
- `full_weights`: Engine.full_weights() all-gathers every unit once, decoding runs on whole weights
  (what the rlhf stage does);
- `per token`: every forward goes through the sharded root, so every block is all-gathered and
  freed again for every new token, with every rank in lockstep.

    python bench/fsdp_generation.py [--new-tokens 32] [--prompts 8] [--rounds 3]
"""

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zhinao.config.pretrain import PretrainParams
from zhinao.distributed import DistEnv
from zhinao.model import build_model
from zhinao.rollout.engine import Sampling
from zhinao.rollout.hf_batched import HFBatchedEngine
from zhinao.training.engine_builder import build_engine
from zhinao_k8s.runner.local import free_port

RESULTS = Path(__file__).parent / "results" / "fsdp_generation.json"


def _config():
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="sdpa",
    )


def _worker(rank: int, world: int, port: int, args, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    params = PretrainParams(engine="fsdp", max_steps=2, warmup_steps=1, loss_chunk_tokens=0)
    env = DistEnv(rank=rank, world_size=world, local_rank=rank)
    engine = build_engine(
        build_model(_config(), seed=0), params, env=env, device=torch.device("cpu"), warmup=1, total=2
    )
    gen = torch.Generator().manual_seed(rank)
    prompts = [torch.randint(0, 8192, (16,), generator=gen).tolist() for _ in range(args.prompts)]
    sampling = Sampling(max_new_tokens=args.new_tokens)
    timings, tokens = {}, {}
    for name, full_weights in (("full_weights", engine.full_weights), ("per_token", None)):
        # No stop tokens: both ways decode exactly new_tokens steps, so the per-token ranks stay in lockstep.
        rollouts = HFBatchedEngine(stop_ids=[], pad_id=0, device=torch.device("cpu"), dtype=None)
        if full_weights is not None:
            rollouts.full_weights = full_weights
        rollouts.sync(engine.model)
        seconds = []
        for _ in range(args.rounds):
            dist.barrier()
            began = time.perf_counter()
            result = rollouts.generate(prompts, sampled=0, greedy=True, sampling=sampling)
            seconds.append(time.perf_counter() - began)
        timings[name], tokens[name] = statistics.median(seconds), result.greedy
    if rank == 0:
        assert tokens["full_weights"] == tokens["per_token"], "the two ways decoded different tokens"
        record = {
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), no GPU",
            "ranks": world,
            "model_params": sum(p.numel() for p in build_model(_config(), seed=0).parameters()),
            "prompts_per_rank": args.prompts,
            "new_tokens": args.new_tokens,
            "seconds_full_weights": timings["full_weights"],
            "seconds_per_token_gather": timings["per_token"],
            "speedup": timings["per_token"] / timings["full_weights"],
        }
        Path(out).write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record, indent=2))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    RESULTS.parent.mkdir(exist_ok=True)
    mp.spawn(_worker, args=(2, port, args, str(RESULTS)), nprocs=2, join=True)


if __name__ == "__main__":
    main()
