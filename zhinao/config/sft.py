"""Hyperparameters of the SFT stage (report section 3.1; defaults from the released fine-tune script).

Defaults that follow the reference `finetune/ds_finetune.sh`: lr 5e-6, 3 epochs, cosine schedule,
warmup ratio 0.01, Adam (0.9, 0.95, 1e-8), weight decay 0.1, gradient clipping 1.0, naive packing
to the maximum length. The reference's max length is 4096 and its batch 4 per device on 8 GPUs;
the defaults here are sized for one small machine.
"""

from typing import Literal

from pydantic import Field, model_validator

from zhinao.config.optim import MAX_SEQ_LEN, FinetuneOptimParams


class SFTParams(FinetuneOptimParams):
    max_len: int = Field(default=1024, ge=16, le=MAX_SEQ_LEN)
    """Tokens per packed row; longer examples are dropped, as the reference does (it uses 4096)."""

    epochs: float = Field(default=3.0, gt=0)
    """Passes over the packed rows (reference: 3)."""

    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps instead (overrides `epochs`)."""

    packing: Literal["naive", "document"] = "naive"
    """`naive`: the report's choice (one causal mask per row); `document`: per-example attention
    (varlen flash attention on GPU, block-causal masks on SDPA/eager) for comparison."""

    system_prompt: str | None = None
    """Prepended as a system turn to conversations without one (the reference script uses
    "You are a helpful assistant."); None adds nothing."""

    messages_field: str = "messages"
    """JSON field of the conversation: a list of {role, content}."""

    dedup: bool = True
    """Drop exact duplicates (after whitespace/case normalisation) of whole conversations."""

    source_ratings: dict[str, float] = Field(default_factory=dict)
    """Mean manual rating per source (see `zhinao.data.sft_tools.rate_sources`); with
    `minSourceRating`, sources rated below it are dropped. Sources with no rating are kept."""

    min_source_rating: float | None = None
    """Drop sources whose rating (from `sourceRatings`, else the mean of the records' `rating`
    field) is below this; None keeps all."""

    label_weights: dict[str, float] = Field(default_factory=dict)
    """Reweighting by label: keys `category:<name>` or `difficulty:<name>`, values sampling
    weights (0 prunes, 2 doubles, 0.5 keeps half). Labels come from the records' fields."""

    eval_fraction: float = Field(default=0.0, ge=0, lt=1)
    """Hold out this fraction of conversations and report their loss at the end."""

    @model_validator(mode="after")
    def _check(self) -> "SFTParams":
        for key in self.label_weights:
            if not key.startswith(("category:", "difficulty:")) or self.label_weights[key] < 0:
                raise ValueError(f"labelWeights key {key!r}: use category:<name> or difficulty:<name> with weight >= 0")
        return self
