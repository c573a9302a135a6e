"""The step loop of causal-LM training on packed token sequences: pretrain and longctx."""

import logging
import time

import torch

from zhinao.data.token_stream import TokenStream
from zhinao.metrics import TrainingMetrics
from zhinao.training.engine import Engine
from zhinao.training.session import TrainingSession

log = logging.getLogger(__name__)


def micro_batches(stream: TokenStream, params, *, device: torch.device) -> list[torch.Tensor]:
    """This rank's next gradAccumSteps micro-batches from its stream."""
    return [
        torch.from_numpy(stream.take(params.micro_batch_size).astype("int64")).to(device)
        for _ in range(params.grad_accum_steps)
    ]


def train_steps(
    session: TrainingSession,
    engine: Engine,
    metrics: TrainingMetrics,
    stream: TokenStream,
    params,
    *,
    start: int,
    tokens_per_step: int,
    meta: dict | None = None,
) -> None:
    """Optimizer steps `start`+1 to maxSteps, checkpointing every checkpointEvery steps and at the end.

    `stream` is this rank's data, already at the position of step `start`; every checkpoint stores
    its position (meta `data`), so a resumed run reads exactly the samples the lost one had not
    trained on. `tokens_per_step` is what it trains on per step; `meta` joins every checkpoint's meta.
    """
    env = session.env
    for step in range(start, params.max_steps):
        began = time.perf_counter()
        batches = micro_batches(stream, params, device=session.device)
        lr = engine.lr
        loss, grad_norm = engine.train_step(batches)
        metrics.record_step(
            step=step + 1,
            loss=loss,
            lr=lr,
            grad_norm=grad_norm,
            tokens=tokens_per_step,
            samples=params.micro_batch_size * params.grad_accum_steps,
            step_seconds=time.perf_counter() - began,
        )
        if (step + 1) % params.log_every == 0 and env.is_main:
            log.info("step %d/%d loss %.4f lr %.2e grad_norm %.3f", step + 1, params.max_steps, loss, lr, grad_norm)
        if (step + 1) % params.checkpoint_every == 0 or step + 1 == params.max_steps:
            session.save_checkpoint(
                engine,
                step + 1,
                {
                    "step": step + 1,
                    "world_size": env.world_size,
                    **(meta or {}),
                    "tokens": (step + 1) * tokens_per_step * env.world_size,
                    "data": stream.state_dict(),
                },
            )
