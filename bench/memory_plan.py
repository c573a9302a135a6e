"""Peak memory of one training step with and without activation checkpointing and chunked cross-entropy.

Two parts, measured in one run:
- small: a 117M-parameter model (0.5b shape, 4 layers, 32K vocabulary), fp32 on CPU, one rank:
  the planner's figure (FakeTensorMode + MemTracker) beside a real CPU run's peak RSS growth
  (zhinao.training.memory_measure), for AC off/full x plain/chunked loss.
- 7b: the report's 7.77B model at 4096 tokens, bf16, rank 0 of 8 (FSDP2), planned only.

    python bench/memory_plan.py [--skip-7b]
"""

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

from zhinao.config.pretrain import PretrainParams
from zhinao.model import build_config
from zhinao.training.memory_measure import config_of, measure_args, measure_peak_rss
from zhinao.training.memory_plan import plan_training_step

RESULTS = Path(__file__).parent / "results" / "memory_plan.json"
VARIANTS = {  # name -> the optimizer fields that differ
    "AC off, plain loss": {"activation_checkpointing": "off", "loss_chunk_tokens": 0},
    "AC off, chunked loss": {"activation_checkpointing": "off", "loss_chunk_tokens": 256},
    "AC full, plain loss": {"activation_checkpointing": "full", "loss_chunk_tokens": 0},
    "AC full, chunked loss": {"activation_checkpointing": "full", "loss_chunk_tokens": 256},
}


def small() -> list[dict]:
    rows = []
    for name, fields in VARIANTS.items():
        fields = {"engine": "ddp", "precision": "fp32", **fields}
        args = measure_args("0.5b", vocab=32_000, layers=4, params=fields, micro_batch=2, seq_len=512)
        plan = plan_training_step(config_of(args), PretrainParams(**fields), world_size=1, micro_batch=2, seq_len=512)
        measured = measure_peak_rss(args)
        rows.append({"variant": name, "planned": plan.breakdown, "planned_peak": plan.peak, "measured_peak": measured})
        print(f"small  {name:24s} planned {plan.peak / 1e9:6.2f} GB  measured {measured / 1e9:6.2f} GB", flush=True)
    return rows


def seven_b() -> list[dict]:
    rows = []
    config = build_config("7b", attention="sdpa")
    for name, fields in {**VARIANTS, "AC full, chunked loss": {"loss_chunk_tokens": 1024}}.items():
        params = PretrainParams(engine="fsdp", precision="bf16", **fields)
        plan = plan_training_step(config, params, world_size=8, micro_batch=1, seq_len=4096)
        rows.append({"variant": name, "planned": plan.breakdown, "planned_peak": plan.peak})
        print(f"7b     {name:24s} planned {plan.peak / 1e9:6.2f} GB  {plan.breakdown}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-7b", action="store_true")
    args = parser.parse_args()
    began = time.time()
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, shared CPU, no GPU",
        "small": small(),
        "7b": [] if args.skip_7b else seven_b(),
    }
    result["seconds"] = round(time.time() - began)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
