"""From a stage's optimizer fields and its model to the engine it trains with.

One place decides the engine, activation checkpointing and the chunked loss, so the training
stages and the memory planner (`zhinao.training.memory_plan`) build exactly the same thing.
"""

import logging

import torch
from torch.distributed.device_mesh import DeviceMesh

from zhinao.distributed import DistEnv
from zhinao.model import apply_activation_checkpointing
from zhinao.training.engine import DDPEngine, DeepSpeedEngine, Engine
from zhinao.training.fsdp_engine import FSDPEngine
from zhinao.training.optim import build_adamw, build_scheduler

log = logging.getLogger(__name__)

SHARDED_FROM_PARAMS = 1_000_000_000
"""From here up, replicating fp32 weights + grads + two Adam moments (16 bytes/param) stops fitting
next to the activations on an 80 GB GPU, so `auto` shards and checkpoints activations."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware has it (the report trains in BF16); fp32 on CPU under `auto`."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def engine_kind(params, *, n_params: int, world_size: int) -> str:
    """`ddp`, `fsdp` or `deepspeed` for the stage's `engine` field (see OptimParams.engine)."""
    if params.engine != "auto":
        return params.engine
    if params.zero_stage > 0:
        return "deepspeed"
    sharded = params.FSDP_CAPABLE and n_params >= SHARDED_FROM_PARAMS and world_size > 1
    return "fsdp" if sharded else "ddp"


def checkpoint_mode(params, *, n_params: int) -> str:
    if params.activation_checkpointing != "auto":
        return params.activation_checkpointing
    return "full" if n_params >= SHARDED_FROM_PARAMS else "off"


def _group_names(groups: list[dict] | None, names: dict[int, str]) -> list[dict] | None:
    """Parameter groups by name: FSDP replaces every parameter with its sharded DTensor."""
    return None if groups is None else [{**g, "params": [names[id(p)] for p in g["params"]]} for g in groups]


def _groups_by_name(groups: list[dict] | None, module: torch.nn.Module) -> list[dict] | None:
    by_name = dict(module.named_parameters())
    return None if groups is None else [{**g, "params": [by_name[n] for n in g["params"]]} for g in groups]


def build_engine(
    model: torch.nn.Module,
    params,
    *,
    env: DistEnv,
    device: torch.device,
    warmup: int,
    total: int,
    groups: list[dict] | None = None,
    fused_optimizer: bool = True,
    shard_mesh: DeviceMesh | None = None,
) -> Engine:
    """AdamW + warmup/cosine from a stage's optimizer fields, wrapped by the engine `engine_kind` picks.

    `groups` overrides the parameter groups (e.g. a critic with its own lr); `shard_mesh` is the
    mesh FSDP2 shards over (default: every rank; see FSDPEngine).
    """
    n_params = sum(p.numel() for p in model.parameters())
    kind = engine_kind(params, n_params=n_params, world_size=env.world_size)
    ac = checkpoint_mode(params, n_params=n_params)
    if hasattr(model, "model") and hasattr(model.model, "layers"):  # causal LMs (not a bare critic head)
        apply_activation_checkpointing(model, ac, every=params.activation_checkpointing_every)
    log.info("engine %s, activation checkpointing %s, %.2fB parameters", kind, ac, n_params / 1e9)

    def make_optimizer(module: torch.nn.Module, param_groups: list[dict] | None):
        optimizer = build_adamw(
            module,
            lr=params.lr,
            betas=(params.adam_beta1, params.adam_beta2),
            eps=params.adam_eps,
            weight_decay=params.weight_decay,
            groups=param_groups,
            fused=fused_optimizer,
        )
        return optimizer, build_scheduler(optimizer, warmup=warmup, total=total, floor=params.min_lr_ratio)

    common = dict(
        env=env,
        device=device,
        autocast_dtype=autocast_dtype(params.precision, device),
        grad_clip=params.grad_clip,
        # Only a causal LM has an lm_head to chunk; reward models and critics end in a 1-wide head.
        loss_chunk=params.loss_chunk_tokens if hasattr(model, "lm_head") else 0,
    )
    if kind == "fsdp":
        names = _group_names(groups, {id(p): n for n, p in model.named_parameters()})
        return FSDPEngine(
            model, lambda sharded: make_optimizer(sharded, _groups_by_name(names, sharded)), mesh=shard_mesh, **common
        )
    optimizer, scheduler = make_optimizer(model, groups)
    if kind == "ddp":
        return DDPEngine(model, optimizer, scheduler, **common)
    return DeepSpeedEngine(
        model.to(device),
        optimizer,
        scheduler,
        zero_stage=params.zero_stage or 3,
        micro_batch=params.micro_batch_size,
        grad_accum=params.grad_accum_steps,
        **common,
    )
