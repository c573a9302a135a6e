"""Optimizer, precision and checkpoint fields shared by every training stage.

Defaults are the reference fine-tune's (`finetune/ds_finetune.sh`), which SFT, reward and RLHF keep;
pretrain and longctx override the ones that differ. The warmup is not shared: the fine-tuning
stages give it as a fraction of the steps their epochs come to, the pretraining stages as a number
of steps of their fixed budget.
"""

from typing import Literal

from pydantic import Field

from zhinao.config._base import SpecModel
from zhinao.config.stream import RecordStreamParams

Precision = Literal["auto", "bf16", "fp32"]
Attention = Literal["auto", "flash_attention_2", "sdpa", "eager"]
ZeroStage = Literal[0, 1, 2, 3]
EngineKind = Literal["auto", "ddp", "fsdp", "deepspeed"]
ActivationCheckpointing = Literal["auto", "off", "full", "blocks", "ops"]

MAX_SEQ_LEN = 1 << 20
"""Upper bound of every sequence length: the report's longest model reads 360K tokens; a typo such as
seqLen 40960000 should fail validation, not the first forward pass."""
MAX_MICRO_BATCH = 4096
"""Upper bound of every micro-batch size, for the same reason."""


class OptimParams(SpecModel):
    lr: float = Field(default=5e-6, gt=0)
    """Peak learning rate (reference fine-tune: 5e-6)."""

    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    """Cosine decay ends at this fraction of the peak (HF's cosine schedule: 0)."""

    weight_decay: float = Field(default=0.1, ge=0)
    """AdamW weight decay, applied to matrices only (not norms or biases)."""

    adam_beta1: float = Field(default=0.9, gt=0, lt=1)
    adam_beta2: float = Field(default=0.95, gt=0, lt=1)
    adam_eps: float = Field(default=1e-8, gt=0)
    """1e-8, not 1e-5: the report saw gradient instability with Llama-2's 1e-5."""

    grad_clip: float = Field(default=1.0, gt=0)
    """Global gradient-norm clipping threshold (the report's and the reference fine-tune's max_grad_norm: 1.0)."""

    micro_batch_size: int = Field(default=4, ge=1, le=MAX_MICRO_BATCH)
    """Rows (SFT), pairs (reward, DPO/ORPO) or prompts (online RL) per rank per forward pass."""

    grad_accum_steps: int = Field(default=1, ge=1)
    """Micro-batches accumulated per optimizer step."""

    seed: int = 1024
    """The reference fine-tune's seed."""

    precision: Precision = "auto"
    """`auto`: bf16 autocast on a GPU that supports it, fp32 on CPU."""

    attention: Attention = "auto"
    """`auto` keeps what the input model's config names when its backend is available."""

    zero_stage: ZeroStage = 0
    """DeepSpeed ZeRO stage 1-3 (engine `deepspeed`, or `auto` with a stage > 0); 0: no DeepSpeed."""

    engine: EngineKind = "auto"
    """How the ranks share the model. `ddp`: full replicas; `fsdp`: PyTorch FSDP2, every transformer
    block sharded, bf16 parameters and fp32 gradient reduction; `deepspeed`: ZeRO `zeroStage` (3 when
    left at 0). `auto`: DeepSpeed when zeroStage > 0, else FSDP2 for models of 1B parameters and up
    (their fp32 Adam state alone outgrows one GPU replicated) on more than one rank, else DDP."""

    activation_checkpointing: ActivationCheckpointing = "auto"
    """Recompute transformer blocks in backward instead of keeping their activations. `full`: every
    block; `blocks`: every `activationCheckpointingEvery`-th block; `ops`: every block, keeping
    matmul and attention outputs; `auto`: `full` for models of 1B parameters and up, else `off`."""

    activation_checkpointing_every: int = Field(default=2, ge=1)
    """Under `blocks`: checkpoint block 0, k, 2k, ... (2: half the blocks)."""

    loss_chunk_tokens: int = Field(default=1024, ge=0)
    """Cross-entropy over the vocabulary in chunks of this many tokens, so the logits of a whole
    micro-batch never exist at once (Liger's fused kernel on CUDA when installed). 0: the plain loss."""

    checkpoint_every: int = Field(default=200, ge=1)
    """Save a resumable checkpoint every N optimizer steps and at the end (reference save_steps: 200)."""

    keep_checkpoints: int = Field(default=2, ge=1)
    """Older checkpoints beyond this many are deleted after a new one is committed."""

    async_checkpoint: bool = True
    """Save checkpoints in the background: training waits only while the state is copied into host
    memory; writing, the sha256 manifest, the upload and the `latest` pointer follow on a thread, one
    save in flight at a time, and the stage's end (or SIGTERM) waits for it. Costs one host-memory
    copy of this rank's share of the state. Under DeepSpeed the staging is its collective
    `save_checkpoint`, each file's state copied into host memory (written in the background too).
    false: training waits for the whole save."""

    export_dtype: Precision = "auto"
    """Precision of the hf/ export's weights. `auto`: bf16 when the stage computes in bf16 (a GPU
    under precision auto, or precision bf16), else fp32, so that CPU runs hand the next stage the
    weights they trained."""

    export_shard_mb: int = Field(default=5000, ge=1)
    """Largest safetensors shard of the hf/ export, in MB (10^6 bytes; Hugging Face's 5GB default)."""

    log_every: int = Field(default=1, ge=1)
    """Log a progress line every N steps (the JSONL record and Prometheus are updated every step)."""


class FinetuneOptimParams(OptimParams):
    """SFT, reward and RLHF: the warmup is a share of the total steps, however epochs or maxSteps set them."""

    warmup_ratio: float = Field(default=0.01, ge=0, lt=1)
    """Fraction of the optimizer steps spent in linear warmup (reference: 0.01)."""

    stream: RecordStreamParams = RecordStreamParams()
    """Record shard size, shuffle window and shard cache of the prepared data the stage streams
    (SFT rows, preference pairs, prompts; docs/data.md)."""
