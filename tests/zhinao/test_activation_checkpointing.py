"""Activation checkpointing: same loss and gradients, fewer activations kept for backward."""

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker

from zhinao.model import apply_activation_checkpointing, build_config, build_model


def _model(mode: str, every: int = 2):
    config = build_config("tiny", vocab_size=64, attention="sdpa")
    config.num_hidden_layers, config.layer_types = 4, ["full_attention"] * 4
    model = build_model(config, seed=0)
    wrapped = apply_activation_checkpointing(model, mode, every=every)
    return model, wrapped


def _step(model, ids):
    """Loss and gradients of one step, and the peak bytes MemTracker files as activations."""
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    peak = tracker.get_tracker_snapshot("peak")
    acts = sum(v.get("Activation", 0) if isinstance(v, dict) else 0 for v in peak.values())
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, acts


@pytest.mark.parametrize(("mode", "wrapped"), [("full", 4), ("blocks", 2), ("ops", 4)])
def test_every_mode_keeps_loss_and_gradients_and_state_dict_keys(mode, wrapped):
    ids = torch.randint(0, 64, (2, 32))
    plain, _ = _model("off")
    model, n = _model(mode)
    assert n == wrapped
    assert model.state_dict().keys() == plain.state_dict().keys()  # checkpoints and exports unchanged
    expected_loss, expected_grads, _ = _step(plain, ids)
    loss, grads, _ = _step(model, ids)
    torch.testing.assert_close(loss, expected_loss)
    for name, grad in grads.items():
        clean = name.replace("._checkpoint_wrapped_module", "")
        torch.testing.assert_close(grad, expected_grads[clean], msg=clean)


def test_checkpointing_lowers_the_activation_peak_in_order():
    ids = torch.randint(0, 64, (4, 128))
    peaks = {mode: _step(_model(mode)[0], ids)[2] for mode in ("off", "ops", "blocks", "full")}
    assert peaks["full"] < peaks["blocks"] < peaks["off"], peaks
    assert peaks["full"] < peaks["ops"] < peaks["off"], peaks
