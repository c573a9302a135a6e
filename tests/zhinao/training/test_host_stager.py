"""Staging to host memory: a copy training cannot change, kept in the same buffers from save to save."""

import torch

from zhinao.training.engine import HostStager, host_copy


def test_a_staged_copy_is_independent_of_the_training_state_and_keeps_ties():
    weight = torch.ones(3)
    state = {"model": {"a": weight, "tied": weight}, "opt": [{"step": torch.tensor(2.0), "lr": 0.1}], "t": (1, "x")}
    staged = host_copy(state)
    weight.add_(1)
    assert torch.equal(staged["model"]["a"], torch.ones(3))
    assert staged["model"]["a"] is staged["model"]["tied"]  # one tensor, saved once
    assert staged["opt"][0]["lr"] == 0.1 and staged["t"] == (1, "x")


def test_the_stager_copies_into_the_buffers_of_the_previous_save():
    stager, weight = HostStager(), torch.arange(4.0)
    first = stager.stage({"w": weight, "step": 1})
    buffer = first["w"]
    weight.mul_(10)
    second = stager.stage({"w": weight, "step": 2})
    assert second["w"] is buffer and torch.equal(buffer, torch.arange(4.0) * 10) and second["step"] == 2
    third = stager.stage({"w": torch.zeros(5)})  # another shape: a new buffer
    assert third["w"] is not buffer and third["w"].shape == (5,)
