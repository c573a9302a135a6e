"""Hyperparameters of the reward-model stage (report section 3.2).

The report gives the RM's validation accuracy (70-75%) but not its loss or hyperparameters; the
pairwise Bradley-Terry loss is the presumed one. Defaults that differ from the SFT stage: one
epoch (more overfits preference data), a 10% held-out split for the pairwise accuracy.
"""

from pydantic import Field

from zhinao.config.optim import MAX_SEQ_LEN, FinetuneOptimParams


class RewardParams(FinetuneOptimParams):
    max_len: int = Field(default=1024, ge=16, le=MAX_SEQ_LEN)
    """Longest prompt + response in tokens; longer pairs are dropped."""

    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps instead (overrides `epochs`)."""

    margin: float = 0.0
    """Bradley-Terry margin m in -log sigmoid(r_chosen - r_rejected - m); a record's own `margin`
    field, when present, is added to it."""

    eval_fraction: float = Field(default=0.1, gt=0, lt=1)
    """Fraction of pairs held out (by a seeded shuffle) for the reported pairwise accuracy."""

    eval_every: int = Field(default=0, ge=0)
    """Measure held-out accuracy every N steps (0: only before and after training)."""

    task: str | None = None
    """Task-specific RM: train only on pairs whose `task` field equals this (e.g. `translation`,
    `function_call`); None trains on every pair."""

    system_prompt: str | None = None
    """Prepended as a system turn to prompts without one (use the SFT stage's value)."""
