"""The one training loop every training stage runs on (pretrain, longctx, sft, reward, rlhf).

A stage supplies what differs: a step function (build this rank's micro-batches for a step, call
`engine.train_step` as often as its method needs, say what it trained on) and optionally an eval
hook. The loop owns what must not differ: resume, the metrics log (zhinao.metrics.TrainingMetrics),
logging, checkpoint cadence and the stop condition. torchtitan's Trainer is the model: the
engine (DDP, DeepSpeed ZeRO, later FSDP2) and the data layer plug in behind the step function and
`Engine`, so neither touches a stage.

Resumability rests on two properties the stages keep: a step's data is a function of a data
position the checkpoint holds (the stream's `state_dict`, zhinao.data.token_stream, via
`checkpoint_meta`), and everything else that evolves (weights, optimizer, scheduler, RNG, the
stage's `meta`) is in the checkpoint.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from zhinao.metrics import flops_per_token
from zhinao.model import matmul_params
from zhinao.training.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What one optimizer step trained on and how it went (one metrics record)."""

    loss: float
    """Mean loss across ranks (what Engine.train_step returns)."""
    grad_norm: float
    tokens: int
    """Tokens this rank trained on in the step (tokens/s and MFU are computed from it)."""
    samples: int
    """Sequences (or pairs, prompts) this rank trained on in the step."""
    extra: dict[str, float] = field(default_factory=dict)
    """Stage-specific figures recorded with the step (rm_accuracy, kl, ...)."""
    logged: dict[str, Any] = field(default_factory=dict)
    """JSON fields for the step's metrics record only, not figures to chart (e.g. `sample_ids`)."""
    stop: bool = False
    """End training after this step (checkpointed like the last one), e.g. RLHF's klStop. The stage
    records why in the loop's `meta["stopped"]`, so that a resumed run stops too."""


StepFn = Callable[[int], StepResult]
"""step index (0-based) -> the result of that optimizer step."""
EvalFn = Callable[[int], dict[str, float]]
"""step number just trained (1-based) -> figures to record with it."""


@dataclass(frozen=True)
class Schedule:
    total_steps: int
    """The loop stops after this many optimizer steps."""
    log_every: int
    """Log a line every this many steps (rank 0)."""
    checkpoint_every: int
    """Checkpoint every this many steps; the last step always checkpoints."""
    eval_every: int = 0
    """Call the eval hook every this many steps (0: only after the last step)."""
    async_checkpoint: bool = False
    """Save checkpoints in the background: training waits only for the copy into host memory."""

    @classmethod
    def of(cls, params, total_steps: int) -> "Schedule":
        """From a stage's params (logEvery, checkpointEvery, evalEvery when it has one)."""
        return cls(
            total_steps=total_steps,
            log_every=params.log_every,
            checkpoint_every=params.checkpoint_every,
            eval_every=getattr(params, "eval_every", 0) or 0,
            async_checkpoint=params.async_checkpoint,
        )


class TrainingLoop:
    """Resume, then run the step function to the end, recording, logging and checkpointing.

    `session` is a zhinao.training.session.TrainingSession (or anything with its env, resume,
    open_metrics and save_checkpoint). `meta` is the stage's state that travels in every
    checkpoint (e.g. its before-training evaluation); `resume` returns it as it was saved.
    """

    def __init__(self, session, engine: Engine, schedule: Schedule, *, flops_per_token: float | None = None):
        self.session, self.engine, self.schedule = session, engine, schedule
        self.flops_per_token = flops_per_token
        self.meta: dict = {}
        self.start = 0

    @classmethod
    def for_model(cls, session, engine: Engine, model, schedule: Schedule, *, seq_len: int) -> "TrainingLoop":
        """A loop whose MFU counts the FLOPs of `model` (a causal LM) at `seq_len` tokens per row."""
        config = model.config
        fpt = flops_per_token(
            n_params=matmul_params(model),
            n_layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            seq_len=seq_len,
        )
        return cls(session, engine, schedule, flops_per_token=fpt)

    def resume(self) -> dict:
        """Load the newest valid checkpoint (if any); returns its meta, which the stage may extend."""
        self.meta = self.session.resume(self.engine)
        self.start = self.meta.get("step", 0)
        return self.meta

    def run(
        self,
        step_fn: StepFn,
        *,
        eval_fn: EvalFn | None = None,
        checkpoint_meta: Callable[[int], dict] | None = None,
    ) -> None:
        """Steps `start`+1 .. total_steps. `checkpoint_meta(step)` adds figures to that step's checkpoint.
        Returns once the last checkpoint is committed."""
        try:
            self._run(step_fn, eval_fn, checkpoint_meta)
        except BaseException as stopped:
            # Whatever stops training (a failing step; SIGTERM, when the pod is being stopped and
            # every rank got it), the save in flight is finished first, as a synchronous save would
            # have been, so that the restart resumes from it. The original error is what propagates.
            try:
                self.session.finish_checkpoints()
            except Exception:
                log.exception("the checkpoint save in flight failed as well (after %s)", type(stopped).__name__)
            raise
        self.session.finish_checkpoints()

    def _run(self, step_fn: StepFn, eval_fn: EvalFn | None, checkpoint_meta: Callable[[int], dict] | None) -> None:
        session, env, schedule = self.session, self.session.env, self.schedule
        # Measuring the peak FLOP/s draws random matrices: it must not move the training RNG.
        with torch.random.fork_rng(devices=[]):
            metrics = session.open_metrics(flops_per_token=self.flops_per_token, resumed_step=self.start)
        total = schedule.total_steps
        end = self.start if self.meta.get("stopped") else total  # a stopped run stays stopped on resume
        for index in range(self.start, end):
            began = time.perf_counter()
            lr = self.engine.lr
            result = step_fn(index)
            seconds = time.perf_counter() - began  # the evaluation below is not training time
            step = index + 1
            extra = dict(result.extra)
            if eval_fn is not None and ((schedule.eval_every and step % schedule.eval_every == 0) or step == total):
                extra.update(eval_fn(step))
            metrics.record_step(
                step=step,
                loss=result.loss,
                lr=lr,
                grad_norm=result.grad_norm,
                tokens=result.tokens,
                samples=result.samples,
                step_seconds=seconds,
                logged={**(result.logged or {}), "world_size": env.world_size},
                **extra,
            )
            if step % schedule.log_every == 0 and env.is_main:
                log.info(
                    "step %d/%d loss %.4f lr %.2e grad_norm %.3f%s",
                    step,
                    total,
                    result.loss,
                    lr,
                    result.grad_norm,
                    "".join(f" {k} {v:.3f}" for k, v in extra.items()),
                )
            if step % schedule.checkpoint_every == 0 or step == total or result.stop:
                meta = {**self.meta, "step": step, "world_size": env.world_size}
                if checkpoint_meta is not None:
                    meta.update(checkpoint_meta(step))
                session.save_checkpoint(self.engine, step, meta, background=schedule.async_checkpoint)
            if result.stop:
                log.info("step %d: the stage asked to stop", step)
                break


def tokens_trained(step_records: list[dict], world_size: int) -> int:
    """Tokens trained on by all ranks together. Each record counts one rank's tokens and names the
    world size of its run (a run resumed on another number of ranks changes it); `world_size` stands
    in for records written before they named it."""
    return sum(r["tokens"] * r.get("world_size", world_size) for r in step_records)
