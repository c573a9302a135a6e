"""Hyperparameters of the pretrain stage (report sections 2.3-2.4).

Defaults follow the report: AdamW (0.9, 0.95, 1e-8), weight decay 0.1, cosine decay to 10% of
the peak learning rate, gradient clipping 1.0, bf16 on GPU.
"""

from typing import Literal

from pydantic import Field, model_validator

from zhinao.config._base import SpecModel

ModelSize = Literal["tiny", "0.5b", "1.8b", "7b"]


class PretrainParams(SpecModel):
    model_size: ModelSize = "tiny"
    """Named 360Zhinao-architecture size; `1.8b` is the report's ablation model, `7b` the released one."""

    seq_len: int = Field(default=256, ge=16)
    """Tokens per packed training sequence (the report trains at 4096)."""

    micro_batch_size: int = Field(default=8, ge=1)
    """Sequences per rank per forward pass."""

    grad_accum_steps: int = Field(default=1, ge=1)
    """Micro-batches accumulated per optimizer step."""

    max_steps: int = Field(default=200, ge=1)
    """Optimizer steps to train for."""

    lr: float = Field(default=3e-3, gt=0)
    """Peak learning rate after warmup."""

    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """Cosine decay ends at this fraction of the peak (the report: 10%)."""

    warmup_steps: int = Field(default=20, ge=0)
    """Linear warmup steps before the cosine decay."""

    weight_decay: float = Field(default=0.1, ge=0)
    """AdamW weight decay, applied to matrices only (not norms or biases)."""

    adam_beta1: float = Field(default=0.9, gt=0, lt=1)
    adam_beta2: float = Field(default=0.95, gt=0, lt=1)
    adam_eps: float = Field(default=1e-8, gt=0)
    """1e-8, not 1e-5: the report saw gradient instability with Llama-2's 1e-5."""

    grad_clip: float = Field(default=1.0, gt=0)
    """Global gradient-norm clipping threshold."""

    seed: int = 1234
    """Seeds model init, data order and dropout; equal seeds give equal weights on CPU."""

    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto`: bf16 autocast on a GPU that supports it, fp32 on CPU."""

    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    """`auto`: flash-attn when installed with CUDA, else PyTorch SDPA."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    """0: PyTorch DDP; 1-3: DeepSpeed ZeRO stage."""

    checkpoint_every: int = Field(default=50, ge=1)
    """Save a resumable checkpoint every N optimizer steps (and at the end)."""

    keep_checkpoints: int = Field(default=2, ge=1)
    """Older checkpoints beyond this many are deleted after a new one is committed."""

    log_every: int = Field(default=1, ge=1)
    """Write the JSONL metrics record every N steps (Prometheus is updated every step)."""

    text_field: str = "text"
    """JSON field holding the document text when packing from a JSONL corpus."""

    source_field: str = "source"
    """JSON field naming a document's source; documents are concatenated only within a source."""

    @model_validator(mode="after")
    def _warmup_fits(self) -> "PretrainParams":
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmupSteps ({self.warmup_steps}) must be < maxSteps ({self.max_steps})")
        return self
