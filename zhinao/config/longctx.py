"""Hyperparameters of the long-context extension stage (report section 3.1.3).

The report raises the RoPE base and continues pretraining on ~5B tokens at 32K, then fine-tunes on
long SFT data (synthetic multi-document QA and multi-turn single-document QA among it). Its final
RoPE base is 50,000,000 for both the 32K and the 360K model, so that is the default here.

Defaults that differ from the pretrain stage: the learning rate (2e-5, EasyContext's default for
long-context training; the report gives none), one sequence per rank (long sequences fill memory)
and the sequence length (32768, the report's stage-1 length).
"""

from typing import Literal

from pydantic import Field, model_validator

from zhinao.config._base import SpecModel
from zhinao.config.optim import MAX_MICRO_BATCH, MAX_SEQ_LEN, Attention, OptimParams, Precision, ZeroStage
from zhinao.config.stream import TokenStreamParams

NeedlePreset = Literal["en", "zh", "kv"]


class NeedleParams(SpecModel):
    """Needle-in-a-haystack evaluation run after training (report Fig. 4), in bf16 autocast, the
    depths of one length decoded as one batch; on rank 0, or with sequenceParallel > 1 across the
    first sequence-parallel group (prefill through the ring)."""

    enabled: bool = True
    """Run the evaluation and write report/needle.png + report/needle.json."""

    preset: NeedlePreset = "en"
    """`en`: the original needle (San Francisco / Dolores Park, scored by the regex
    `sandwich.+?dolores.+?sunny`); `zh`: the Chinese needle whose answer is 刘秀; `kv`: value
    retrieval (Arize-style): a different random "special magic {city} number" in every cell."""

    lengths: list[int] | None = None
    """Context lengths in tokens. Default: `numLengths` values spaced evenly from `minLength` to
    the stage's maxPositionEmbeddings (the reference: 1024 to 360000 in 10 steps)."""

    min_length: int = Field(default=1024, ge=32)
    """Shortest context of the default grid (clamped to the longest)."""

    num_lengths: int = Field(default=10, ge=1, le=64)
    """Number of context lengths in the default grid."""

    num_depths: int = Field(default=21, ge=1, le=101)
    """Needle depths spaced evenly over 0-100% (21: steps of 5%, as the reference)."""

    max_new_tokens: int = Field(default=48, ge=1, le=1024)
    """Greedy-decoded answer length."""


class LongContextParams(OptimParams):
    # Another split of the same data-parallel streams: the checkpoint reshards (FSDP2) or is replicated
    # (DDP), and every data-parallel group reads what it would have read (zhinao.longctx.resume_layout).
    LAYOUT_FIELDS = ("sequence_parallel",)

    rope_theta: float = Field(default=50_000_000.0, gt=0)
    """New RoPE base. The report first tried 1e6 for 32K, then settled on 5e7 for 32K and 360K."""

    seq_len: int = Field(default=32768, ge=16, le=MAX_SEQ_LEN)
    """Tokens per packed training sequence (the report: 32K in stage 1, up to 360K in stage 2)."""

    max_position_embeddings: int | None = Field(default=None, ge=16, le=MAX_SEQ_LEN)
    """Written into the exported config; default seqLen (the report's 32K model: 32768)."""

    sequence_parallel: int = Field(default=1, ge=1, le=1024)
    """Ranks one sequence is split across (ring attention, zigzag layout: each rank holds 2 of
    2 x sequenceParallel chunks). Must divide the world size; the data parallel degree is
    worldSize / sequenceParallel. 1: every rank holds whole sequences."""

    micro_batch_size: int = Field(default=1, ge=1, le=MAX_MICRO_BATCH)
    """Sequences per sequence-parallel group per forward pass."""

    max_steps: int = Field(default=100, ge=1)
    """Optimizer steps of continual pretraining (the report: ~5B tokens at 32K)."""

    lr: float = Field(default=2e-5, gt=0)
    """Peak learning rate (continual pretraining of a trained model: far below pretraining's)."""

    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """Cosine decay ends at this fraction of the peak."""

    warmup_steps: int = Field(default=10, ge=0)
    """Linear warmup steps before the cosine decay."""

    seed: int = 1234
    """Seeds data order and the synthetic data; the model comes trained from the input."""

    stream: TokenStreamParams = TokenStreamParams()
    """Shuffle window and shard cache of the streaming reader."""

    precision: Precision = "auto"
    """`auto`: bf16 autocast on a GPU that supports it, fp32 on CPU. RoPE inverse frequencies stay fp32."""

    attention: Attention = "auto"
    """Attention kernel when sequenceParallel is 1 (training and the needle evaluation); with
    sequenceParallel > 1 both use the ring."""

    zero_stage: ZeroStage = 0
    """0: PyTorch DDP or FSDP2 (see engine); 1-3: DeepSpeed ZeRO (only with sequenceParallel 1)."""

    synthetic_mix: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of training sequences taken from the synthetic long QA conversations (rendered in
    the chat format, loss on every token). The 360K README reports that keeping the pretraining
    loss on during long SFT helped; 0 trains on the packed corpus only."""

    synthetic_samples: int = Field(default=64, ge=0)
    """Synthetic long-SFT conversations written to sft/long-qa.jsonl for the SFT stage."""

    synthetic_questions: int = Field(default=4, ge=1, le=32)
    """QA turns per synthetic conversation (the report: several QA pairs per row, multi-turn)."""

    checkpoint_every: int = Field(default=50, ge=1)
    """Save a resumable checkpoint every N optimizer steps (and at the end)."""

    text_field: str = "text"
    """JSON field holding the document text in the corpus."""

    source_field: str = "source"
    """JSON field naming a document's source; documents are concatenated only within a source."""

    needle: NeedleParams = Field(default_factory=NeedleParams)

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings or self.seq_len

    @model_validator(mode="after")
    def _consistent(self) -> "LongContextParams":
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmupSteps ({self.warmup_steps}) must be < maxSteps ({self.max_steps})")
        if self.sequence_parallel > 1 and self.seq_len % (2 * self.sequence_parallel):
            raise ValueError(
                f"seqLen ({self.seq_len}) must be divisible by 2 x sequenceParallel ({self.sequence_parallel}): "
                "the zigzag layout cuts it into that many chunks"
            )
        deepspeed = self.engine == "deepspeed" or (self.engine == "auto" and self.zero_stage > 0)
        if deepspeed and self.sequence_parallel > 1:
            raise ValueError(
                "sequenceParallel > 1 runs under engine ddp or fsdp (the ring is not wired into DeepSpeed): "
                "set zeroStage 0 and engine fsdp to shard the model"
            )
        if self.max_positions < self.seq_len:
            raise ValueError(f"maxPositionEmbeddings ({self.max_positions}) must be >= seqLen ({self.seq_len})")
        return self
