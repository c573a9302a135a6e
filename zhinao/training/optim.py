"""AdamW with decoupled weight decay on matrices only, and warmup + cosine to a floor."""

import math

import torch

from zhinao.model import param_shape


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Norm weights, biases and 1-D tensors are not decayed (they have no scale to regularise)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if len(param_shape(p)) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(
    model: torch.nn.Module,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    groups: list[dict] | None = None,
    fused: bool = True,
):
    """`groups` replaces the default decay/no-decay split (e.g. a critic with its own lr).

    The fused kernel (one pass over all parameters) exists for CPU and CUDA tensors alike; `fused`
    False is the per-tensor loop (same state, used by the memory planner, see memory_plan.py).
    """
    options = {"fused": True} if fused else {"foreach": False}
    return torch.optim.AdamW(groups or param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, **options)


def cosine_multiplier(step: int, *, warmup: int, total: int, floor: float) -> float:
    """LR multiplier at optimizer step `step`: linear warmup, then cosine from 1 down to `floor`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, *, warmup: int, total: int, floor: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_multiplier(step, warmup=warmup, total=total, floor=floor)
    )
