"""The step function of causal-LM training on packed token sequences: pretrain and longctx."""

import torch

from zhinao.data.token_stream import TokenStream
from zhinao.training.engine import Engine, LossFn
from zhinao.training.loop import StepFn, StepResult


def micro_batches(stream: TokenStream, params, *, device: torch.device) -> list[torch.Tensor]:
    """This rank's next gradAccumSteps micro-batches from its stream."""
    return [
        torch.from_numpy(stream.take(params.micro_batch_size).astype("int64")).to(device)
        for _ in range(params.grad_accum_steps)
    ]


def causal_lm_step(
    engine: Engine,
    stream: TokenStream,
    params,
    *,
    device: torch.device,
    tokens_per_step: int,
    loss_fn: LossFn | None = None,
) -> StepFn:
    """Train on this rank's next sequences each step. `stream` must stand at the loop's first step
    (`TokenStream.resume` with the resumed meta) and its `state_dict()` go into every checkpoint's
    meta (`data`); `tokens_per_step` is what this rank trains on per step. `loss_fn` replaces the
    model's own causal-LM loss (sequence parallelism: this rank's share of the sequences' loss)."""

    def step(index: int) -> StepResult:
        loss, grad_norm = engine.train_step(micro_batches(stream, params, device=device), loss_fn)
        read = stream.pop_read_ids()  # with stream.recordSamples
        return StepResult(
            loss=loss,
            grad_norm=grad_norm,
            tokens=tokens_per_step,
            samples=params.micro_batch_size * params.grad_accum_steps,
            logged={} if read is None else {"sample_ids": [list(ids) for ids in read]},
        )

    return step
