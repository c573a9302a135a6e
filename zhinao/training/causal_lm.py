"""The step function of causal-LM training on packed token sequences: pretrain and longctx."""

import numpy as np
import torch

from zhinao.data.packing import batch_indices
from zhinao.training.engine import Engine
from zhinao.training.loop import StepFn, StepResult


def micro_batches(
    data: np.ndarray, params, *, step: int, rank: int, world_size: int, device: torch.device
) -> list[torch.Tensor]:
    """This rank's micro-batches of optimizer step `step`: a pure function of the position, so resumable."""
    return [
        torch.from_numpy(
            data[
                batch_indices(
                    n_sequences=len(data),
                    step=step,
                    micro_step=m,
                    rank=rank,
                    world_size=world_size,
                    micro_batch=params.micro_batch_size,
                    grad_accum=params.grad_accum_steps,
                    seed=params.seed,
                )
            ].astype(np.int64)
        ).to(device)
        for m in range(params.grad_accum_steps)
    ]


def causal_lm_step(
    engine: Engine,
    data: np.ndarray,
    params,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    tokens_per_step: int,
) -> StepFn:
    """Train on this rank's sequences of each step; `rank` and `world_size` place it among the
    replicas that read different sequences, `tokens_per_step` is what it trains on per step."""

    def step(index: int) -> StepResult:
        batches = micro_batches(data, params, step=index, rank=rank, world_size=world_size, device=device)
        loss, grad_norm = engine.train_step(batches)
        return StepResult(
            loss=loss,
            grad_norm=grad_norm,
            tokens=tokens_per_step,
            samples=params.micro_batch_size * params.grad_accum_steps,
        )

    return step
