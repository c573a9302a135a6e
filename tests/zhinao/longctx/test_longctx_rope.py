"""RoPE base change: config, fp32 inverse frequencies, and equivalence with a model built at the new base."""

import pytest
import torch

from zhinao.longctx.rope import (
    REPORT_ROPE_THETA,
    apply_rope_base,
    ensure_fp32_inv_freq,
    inverse_frequencies,
    rope_theta_of,
    rotary_modules,
)
from zhinao.model import build_config, build_model


def tiny(theta: float = 10_000.0):
    return build_model(build_config("tiny", vocab_size=64, rope_theta=theta, attention="eager"), seed=0)


def test_inverse_frequencies_follow_the_formula_in_fp32():
    inv = inverse_frequencies(REPORT_ROPE_THETA, 16)
    assert inv.dtype == torch.float32 and inv.shape == (8,)
    assert inv[0].item() == 1.0
    assert inv[-1].item() == pytest.approx(REPORT_ROPE_THETA ** (-14 / 16), rel=1e-6)
    with pytest.raises(ValueError, match="even"):
        inverse_frequencies(1e4, 15)


def test_changed_model_equals_one_built_at_the_new_base():
    model = tiny()
    old = apply_rope_base(model, REPORT_ROPE_THETA, max_position_embeddings=32768)
    assert old == 10_000.0 and rope_theta_of(model.config) == REPORT_ROPE_THETA
    assert model.config.max_position_embeddings == 32768
    fresh = tiny(REPORT_ROPE_THETA)
    fresh.load_state_dict(model.state_dict())
    ids = torch.randint(0, 64, (1, 40))
    # transformers computes theta ** x in fp32, we in fp64 before the cast: equal up to rounding
    assert torch.allclose(rotary_modules(model)[0].inv_freq, rotary_modules(fresh)[0].inv_freq, rtol=1e-6, atol=0)
    assert torch.allclose(model(input_ids=ids).logits, fresh(input_ids=ids).logits, rtol=0, atol=1e-6)
    # ... and differs from the old base (positions > 0 rotate differently).
    assert not torch.allclose(tiny()(input_ids=ids).logits, model(input_ids=ids).logits)


def test_new_base_survives_save_and_load(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny()
    apply_rope_base(model, REPORT_ROPE_THETA, max_position_embeddings=4096)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert rope_theta_of(loaded.config) == REPORT_ROPE_THETA
    assert torch.allclose(rotary_modules(loaded)[0].inv_freq, inverse_frequencies(REPORT_ROPE_THETA, 16))


def test_bf16_cast_then_ensure_restores_fp32_frequencies():
    model = tiny()
    apply_rope_base(model, REPORT_ROPE_THETA)
    model.to(torch.bfloat16)
    rotary = rotary_modules(model)[0]
    assert rotary.inv_freq.dtype == torch.bfloat16  # what a plain cast does ...
    lossy = rotary.inv_freq.float()
    ensure_fp32_inv_freq(model)
    exact = inverse_frequencies(REPORT_ROPE_THETA, 16)
    assert rotary.inv_freq.dtype == torch.float32 and torch.equal(rotary.inv_freq, exact)
    # ... and why it matters: at position 32767 bf16 frequencies are off by radians.
    assert (32767 * (lossy - exact)).abs().max().item() > 0.1


def test_scaled_rope_types_are_refused():
    model = tiny()
    model.config.rope_parameters = {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(ValueError, match="plain RoPE"):
        apply_rope_base(model, 5e7)
