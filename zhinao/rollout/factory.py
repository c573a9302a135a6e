"""Picks the rollout engine a stage's `rolloutEngine` setting names."""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from zhinao.config.rlhf import RLHFParams
from zhinao.rollout.engine import RolloutEngine, stop_token_ids
from zhinao.rollout.hf_batched import HFBatchedEngine
from zhinao.training.engine_builder import autocast_dtype


def build_rollout_engine(
    params: RLHFParams,
    *,
    model_dir: str,
    tokenizer,
    device: torch.device,
    full_weights: Callable[[], AbstractContextManager] = nullcontext,
) -> RolloutEngine:
    """`model_dir`: the policy's Hugging Face export (vLLM loads its architecture and first weights there).
    `full_weights`: the training engine's `Engine.full_weights`, opened while an engine reads the policy."""
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
            full_weights=full_weights,
        )
    dtype = autocast_dtype(params.rollout_precision, device)
    return HFBatchedEngine(
        stop_ids=stops, pad_id=tokenizer.pad_token_id, device=device, dtype=dtype, full_weights=full_weights
    )
