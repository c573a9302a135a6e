"""`make gpu-check`'s ReMax line: a short ReMax run of the RLHF stage itself on a 0.5B-class model, once
per rollout engine that is installed (`hf` always, `vllm` when it imports and a GPU is there).

The stage runs in this process on random weights (the 0.5b config with the full 158K vocabulary; a
small BPE tokenizer, enough for the arithmetic prompts and the rule reward), so every response runs
to `max_new_tokens`: the step is rollout (sampled + greedy rows) + scoring + update at a fixed
length. Reported per engine, from the stage's own step records without the first (warm-up) step:
samples (prompts) per second of whole steps and the share of step time spent generating.
"""

import importlib.util
import json
import os
import tempfile
from pathlib import Path

import torch

from zhinao.config.rlhf import RLHFParams
from zhinao.config.runtime import StageRuntime
from zhinao.model import build_config, build_model
from zhinao.stages import rlhf
from zhinao.synthetic import all_pairs, question, rl_prompts
from zhinao.tokenizer import to_transformers, train_bpe

GPU = dict(size="0.5b", micro_batch=16, grad_accum=2, new_tokens=128, steps=4)
DRY_RUN = dict(size="tiny", micro_batch=4, grad_accum=1, new_tokens=4, steps=2)  # CPU: the path, not speed


def installed_engines(cuda: bool) -> list[str]:
    return ["hf"] + (["vllm"] if cuda and importlib.util.find_spec("vllm") is not None else [])


def write_inputs(root: Path, size: str) -> dict[str, str]:
    """The stage's inputs: a policy export (hf/ with tokenizer) and the demo's arithmetic prompts."""
    tok = to_transformers(train_bpe([f"{question(a, b)}{a + b}" for a, b in all_pairs()] * 2, vocab_size=400))
    hf = root / "policy" / "hf"
    tok.save_pretrained(hf)
    vocab = len(tok) if size == "tiny" else None  # None: the size's own 158K vocabulary
    config = build_config(size, vocab_size=vocab, max_position_embeddings=4096, attention="auto")
    config.pad_token_id = tok.pad_token_id
    build_model(config, seed=0).save_pretrained(hf, safe_serialization=True)
    (root / "prompts").mkdir()
    (root / "prompts" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl_prompts(all_pairs())))
    return {"policy": f"file://{root / 'policy'}", "prompts": f"file://{root / 'prompts'}"}


def run_engine(root: Path, inputs: dict[str, str], engine: str, shape: dict) -> dict:
    params = RLHFParams(
        algorithm="remax",
        rollout_engine=engine,
        rm_weight=0,
        rules={"arithmetic": 1.0},
        max_steps=shape["steps"],
        micro_batch_size=shape["micro_batch"],
        grad_accum_steps=shape["grad_accum"],
        max_new_tokens=shape["new_tokens"],
        eval_prompts=0,
        checkpoint_every=10_000,
        lr=1e-6,
    )
    out = root / f"out-{engine}"
    rt = StageRuntime(
        pipeline="gpu-check", stage="rlhf", kind="rlhf", params=params.to_wire(), inputs=inputs, output=f"file://{out}"
    )
    rlhf.run(rt, params)
    lines = (out / "metrics" / "rank-0.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if r.get("event") == "step"][1:]  # step 1 warms up
    seconds = sum(r["step_seconds"] for r in steps)
    return {
        "samples_per_second": sum(r["samples"] for r in steps) / seconds,
        "generation_share": sum(r["generation_seconds"] for r in steps) / seconds,
        "timed_steps": len(steps),
    }


def remax_check(dry_run: bool) -> dict:
    cuda = torch.cuda.is_available() and not dry_run
    shape = DRY_RUN if not cuda else GPU
    with tempfile.TemporaryDirectory(prefix="remax-check-") as tmp:
        root = Path(tmp)
        inputs = write_inputs(root, shape["size"])
        before = os.environ.get("ZHINAO_WORKDIR")
        os.environ["ZHINAO_WORKDIR"] = str(root / "work")  # the stage's scratch, removed with tmp
        try:
            engines = {e: run_engine(root, inputs, e, shape) for e in installed_engines(cuda)}
        finally:
            if before is None:
                os.environ.pop("ZHINAO_WORKDIR")
            else:
                os.environ["ZHINAO_WORKDIR"] = before
    return {
        "model": shape["size"],
        "prompts_per_step": shape["micro_batch"] * shape["grad_accum"],
        "max_new_tokens": shape["new_tokens"],
        "engines": engines,
    }
