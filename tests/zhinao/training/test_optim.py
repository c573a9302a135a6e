"""Warmup + cosine to 10% of the peak, and weight decay on matrices only (report section 2.4)."""

import math

import pytest
import torch

from zhinao.training.optim import build_adamw, build_scheduler, cosine_multiplier, param_groups


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.1), (9, 1.0), (10, 1.0), (55, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))), (100, 0.1), (150, 0.1)],
)
def test_cosine_multiplier(step, expected):
    assert cosine_multiplier(step, warmup=10, total=100, floor=0.1) == pytest.approx(expected)


def test_scheduler_drives_the_optimizer_lr():
    model = torch.nn.Linear(4, 4)
    opt = build_adamw(model, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    sched = build_scheduler(opt, warmup=2, total=10, floor=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert opt.defaults["eps"] == 1e-8 and opt.defaults["betas"] == (0.9, 0.95)


def test_norms_and_biases_are_not_decayed():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3
