"""Does each GPU stage of a pipeline fit its GPUs? The memory plan of every stage, and the refusals.

A stage is planned when it asks for GPUs and trains a causal LM whose shape the spec names:
pretrain (its modelSize), and longctx / SFT stages whose `model` input leads back to a pretrain
stage of the pipeline (longctx with its sequence-parallel split: seqLen / sequenceParallel tokens
per rank). Reward and RLHF stages (several models per rank) and models given by URI
are reported as not planned. The plan itself is `zhinao.training.memory_plan`.
"""

import re
from dataclasses import dataclass

from zhinao.model import SIZES, build_config
from zhinao.training.memory_plan import HEADROOM, MemoryPlan, PlanError, plan_training_step
from zhinao_k8s.api.v1alpha1 import TrainingPipeline

_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(quantity: str) -> int:
    """'80G' -> 80e9, '141Gi' -> 141 * 2**30."""
    match = re.fullmatch(r"([0-9.]+)([kMGT]i?)?", quantity)
    if not match:
        raise ValueError(f"{quantity!r} is not a byte quantity (e.g. 80G, 141Gi)")
    return int(float(match.group(1)) * _SUFFIX[match.group(2) or ""])


@dataclass(frozen=True)
class StageFit:
    index: int
    name: str
    capacity: int
    """Bytes of one GPU."""
    plan: MemoryPlan | None
    skipped: str | None = None
    """Why there is no plan."""

    @property
    def refused(self) -> bool:
        return self.plan is not None and not self.plan.fits(self.capacity)


def _model_config(pipeline: TrainingPipeline, stage):
    """The Qwen2 config the stage trains, traced through `model` inputs to a pretrain stage; None if unknown."""
    stage = pipeline.model_lineage(stage)[-1]
    if stage.kind != "pretrain":
        return None
    vocab = SIZES[stage.params.model_size].vocab
    if vocab is None:
        tokenizer = pipeline.source(stage, "tokenizer")
        vocab = tokenizer.params.vocab_size if tokenizer is not None else None
    if vocab is None:
        return None
    return build_config(stage.params.model_size, vocab_size=vocab, attention="sdpa")


def _sequence(stage) -> tuple[int, int]:
    """(tokens per sequence, ranks one sequence is split across)."""
    if stage.kind == "longctx":
        return stage.params.seq_len, stage.params.sequence_parallel
    return (stage.params.seq_len if stage.kind == "pretrain" else stage.params.max_len), 1


def plan_stage(pipeline: TrainingPipeline, index: int) -> StageFit:
    stage = pipeline.spec.stages[index]
    capacity = quantity_bytes(stage.resources.gpu_memory)
    if stage.kind not in ("pretrain", "longctx", "sft"):
        return StageFit(index, stage.name, capacity, None, f"{stage.kind} stages are not planned")
    config = _model_config(pipeline, stage)
    if config is None:
        return StageFit(index, stage.name, capacity, None, "model shape unknown (not traced to a pretrain stage)")
    params = stage.params
    if params.precision == "auto":  # on a GPU `auto` is bf16
        params = params.model_copy(update={"precision": "bf16"})
    seq_len, sequence_parallel = _sequence(stage)
    try:
        plan = plan_training_step(
            config,
            params,
            world_size=stage.replicas * stage.nproc_per_node,
            micro_batch=params.micro_batch_size,
            seq_len=seq_len,
            sequence_parallel=sequence_parallel,
        )
    except PlanError as e:
        return StageFit(index, stage.name, capacity, None, str(e))
    return StageFit(index, stage.name, capacity, plan)


def plan_pipeline(pipeline: TrainingPipeline) -> list[StageFit]:
    """A fit for every stage that asks for GPUs, in stage order."""
    return [plan_stage(pipeline, i) for i, s in enumerate(pipeline.spec.stages) if s.resources.gpu > 0]


def refusal(fit: StageFit) -> str:
    """The `field.path: reason` line of a stage that does not fit."""
    plan = fit.plan
    parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in plan.breakdown.items())
    return (
        f"spec.stages[{fit.index}].resources.gpuMemory: stage {fit.name!r} needs {plan.peak / 1e9:.1f} GB per GPU "
        f"({parts}) with engine {plan.engine} on {plan.ranks} ranks; {fit.capacity / 1e9:.1f} GB less "
        f"{HEADROOM / 1e9:.1f} GB headroom does not hold it (try engine fsdp, more GPUs, activation checkpointing "
        "or a smaller micro-batch)"
    )
