"""Picks the rollout engine a stage's `rolloutEngine` setting names."""

import torch

from zhinao.config.rlhf import RLHFParams
from zhinao.rollout.engine import RolloutEngine, stop_token_ids
from zhinao.rollout.hf_batched import HFBatchedEngine
from zhinao.training.session import autocast_dtype


def build_rollout_engine(params: RLHFParams, *, model_dir: str, tokenizer, device: torch.device) -> RolloutEngine:
    """`model_dir`: the policy's Hugging Face export (vLLM loads its architecture and first weights there)."""
    stops = stop_token_ids(tokenizer)
    if params.rollout_engine == "vllm":
        if device.type != "cuda":
            raise SystemExit("rolloutEngine vllm needs a GPU; use rolloutEngine hf on CPU")
        from zhinao.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_dir,
            stop_ids=stops,
            gpu_memory_utilization=params.vllm_gpu_memory_utilization,
            max_model_len=params.max_prompt_len + params.max_new_tokens,
            seed=params.seed,
        )
    dtype = autocast_dtype(params.rollout_precision, device)
    return HFBatchedEngine(stop_ids=stops, pad_id=tokenizer.pad_token_id, device=device, dtype=dtype)
