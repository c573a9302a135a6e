"""Peak memory of real CPU training steps, to check the memory planner against.

A fresh interpreter builds the model, the engine and a batch exactly as `memory_plan` does, but
with real tensors, and runs two steps (the second one has the optimizer state). The figure is
the process's peak resident set (getrusage ru_maxrss) minus its resident set just before the
model was built, with glibc told to serve every allocation of 64 KiB and up by mmap
(MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident set at once and the RSS peak is the
peak of live tensor bytes plus the interpreter's own small growth.

    python -m zhinao.training.memory_measure '<json of measure_args>'
"""

import json
import os
import resource
import subprocess
import sys

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_args(size: str, *, vocab: int, layers: int | None, params: dict, micro_batch: int, seq_len: int) -> dict:
    return {
        "size": size,
        "vocab": vocab,
        "layers": layers,
        "params": params,
        "micro_batch": micro_batch,
        "seq_len": seq_len,
    }


def config_of(args: dict):
    from zhinao.model import build_config

    config = build_config(args["size"], vocab_size=args["vocab"], attention="sdpa")
    if args["layers"]:
        config.num_hidden_layers = args["layers"]
        config.layer_types = ["full_attention"] * args["layers"]
    return config


def measure_peak_rss(args: dict) -> int:
    """Bytes: peak RSS growth over two real training steps, in a fresh process."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", __name__, json.dumps(args)], env=env, capture_output=True, text=True, check=True
    )
    return int(result.stdout.strip().splitlines()[-1])


def _main(args: dict) -> None:
    from zhinao.config.pretrain import PretrainParams
    from zhinao.distributed import DistEnv
    from zhinao.model import build_model
    from zhinao.training.engine_builder import build_engine
    from zhinao.training.memory_plan import train_one_step

    config = config_of(args)
    params = PretrainParams(**args["params"])
    batch = torch.randint(0, config.vocab_size, (args["micro_batch"], args["seq_len"]))
    before = _rss_bytes()
    model = build_model(config, seed=0)
    env = DistEnv(rank=0, world_size=1, local_rank=0)
    engine = build_engine(model, params, env=env, device=torch.device("cpu"), warmup=1, total=2)
    for _ in range(2):
        train_one_step(engine, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(peak - before)


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
