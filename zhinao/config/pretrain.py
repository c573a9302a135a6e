"""Hyperparameters of the pretrain stage (report sections 2.3-2.4).

Defaults follow the report: AdamW (0.9, 0.95, 1e-8), weight decay 0.1, cosine decay to 10% of
the peak learning rate, gradient clipping 1.0, bf16 on GPU.
"""

from typing import Literal

from pydantic import Field, model_validator

from zhinao.config.optim import MAX_MICRO_BATCH, MAX_SEQ_LEN, Attention, OptimParams
from zhinao.config.stream import TokenStreamParams

ModelSize = Literal["tiny", "0.5b", "1.8b", "7b"]


class PretrainParams(OptimParams):
    FSDP_CAPABLE = True  # the causal-LM loop only trains and exports through the engine
    model_size: ModelSize = "tiny"
    """Named 360Zhinao-architecture size; `1.8b` is the report's ablation model, `7b` the released one."""

    seq_len: int = Field(default=256, ge=16, le=MAX_SEQ_LEN)
    """Tokens per packed training sequence (the report trains at 4096)."""

    micro_batch_size: int = Field(default=8, ge=1, le=MAX_MICRO_BATCH)
    """Sequences per rank per forward pass."""

    max_steps: int = Field(default=200, ge=1)
    """Optimizer steps to train for."""

    lr: float = Field(default=3e-3, gt=0)
    """Peak learning rate after warmup."""

    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """Cosine decay ends at this fraction of the peak (the report: 10%)."""

    warmup_steps: int = Field(default=20, ge=0)
    """Linear warmup steps before the cosine decay."""

    seed: int = 1234
    """Seeds model init, data order and dropout; equal seeds give equal weights on CPU."""

    attention: Attention = "auto"
    """`auto`: flash-attn when installed with CUDA, else PyTorch SDPA."""

    checkpoint_every: int = Field(default=50, ge=1)
    """Save a resumable checkpoint every N optimizer steps (and at the end)."""

    eval_every: int = Field(default=0, ge=0)
    """With `inputs.valid`: the validation loss every N optimizer steps and after the last one (0:
    after the last only), recorded as `valid_loss` in the metrics log. Computed in the loop, so no
    checkpoint has to be kept to score the run afterwards."""

    text_field: str = "text"
    """JSON field holding the document text when packing from a JSONL corpus."""

    source_field: str = "source"
    """JSON field naming a document's source; documents are concatenated only within a source."""

    stream: TokenStreamParams = TokenStreamParams()
    """Token shard size, shuffle window and shard cache of the streaming reader."""

    @model_validator(mode="after")
    def _warmup_fits(self) -> "PretrainParams":
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmupSteps ({self.warmup_steps}) must be < maxSteps ({self.max_steps})")
        return self
