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


def test_the_stager_copies_on_one_thread_and_gives_training_its_threads_back():
    # Split over intra-op threads, each copy waits for every thread to be scheduled: on a busy host
    # that made staging several times slower (zhinao.training.engine._one_intra_op_thread).
    seen = []

    class ThreadProbe:
        def __deepcopy__(self, memo):  # host_copy deep-copies what is not a tensor, inside the staging
            seen.append(torch.get_num_threads())
            return self

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        staged = HostStager().stage({"w": torch.arange(8.0), "probe": ThreadProbe()})
        assert seen == [1] and torch.get_num_threads() == 2
        assert torch.equal(staged["w"], torch.arange(8.0))
    finally:
        torch.set_num_threads(threads)
