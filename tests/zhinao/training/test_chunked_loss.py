"""Chunked cross-entropy equals the plain logits -> cross-entropy loss in value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from zhinao.chat import IGNORE_INDEX
from zhinao.model import build_config, build_model
from zhinao.training.chunked_loss import ChunkedLossLM, chunked_cross_entropy


def _plain(hidden, weight, labels):
    return F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_value_and_gradients_match_the_plain_loss_in_fp32(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(50, 16, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(300, 16).requires_grad_()
    labels = torch.randint(0, 300, (50,))
    labels[::4] = IGNORE_INDEX  # prompt tokens and padding are not trained

    expected = _plain(hidden, weight, labels)
    expected_gh, expected_gw = torch.autograd.grad(expected * 3.0, (hidden, weight))
    got = chunked_cross_entropy(hidden, weight, labels, chunk=chunk)
    got_gh, got_gw = torch.autograd.grad(got * 3.0, (hidden, weight))

    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_gh, expected_gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_gw, expected_gw, rtol=1e-5, atol=1e-6)


def test_no_labelled_token_gives_zero_not_nan():
    hidden = torch.randn(4, 8, requires_grad=True)
    loss = chunked_cross_entropy(hidden, torch.randn(10, 8), torch.full((4,), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(hidden.grad == 0)


def test_under_bf16_autocast_the_matmul_runs_in_bf16_and_matches_the_plain_loss_there():
    """Value and gradients against the plain loss under the same autocast (its lm_head matmul in
    bf16, the softmax in fp32), unlabelled rows included; the gradients keep their inputs' dtypes."""
    torch.manual_seed(1)
    hidden = torch.randn(32, 16).requires_grad_()
    weight = torch.randn(100, 16).requires_grad_()
    labels = torch.randint(0, 100, (32,))
    labels[::3] = IGNORE_INDEX
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _plain(hidden, weight, labels)
        got = chunked_cross_entropy(hidden, weight, labels, chunk=8)
    assert got.dtype == torch.float32
    expected_grads = torch.autograd.grad(expected * 0.5, (hidden, weight))
    got_grads = torch.autograd.grad(got * 0.5, (hidden, weight))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        assert g.dtype == torch.float32
        # bf16 operands (8 mantissa bits): the gradient's matmuls round differently, not more.
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-3)
    assert torch.all(got_grads[0][::3] == 0)  # unlabelled rows


@pytest.mark.parametrize("aligned", [False, True])
def test_the_wrapped_model_trains_like_the_hf_loss(aligned):
    """Same loss and same parameter gradients as Qwen2ForCausalLM(labels=...); `aligned`: labels
    already shifted (`shift_labels`, a sequence-parallel shard's) are used as they are."""
    model = build_model(build_config("tiny", vocab_size=97, attention="eager"), seed=0)
    ids = torch.randint(0, 97, (2, 12))
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    kwargs = {"labels": labels, "shift_labels": torch.roll(labels, -1, dims=1)} if aligned else {"labels": labels}

    expected = model(input_ids=ids, **kwargs).loss
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    got = ChunkedLossLM(model, chunk=5)(input_ids=ids, **kwargs).loss
    got.backward()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_calls_without_labels_reach_the_model_unchanged():
    model = build_model(build_config("tiny", vocab_size=50, attention="eager"), seed=0)
    ids = torch.randint(0, 50, (1, 6))
    torch.testing.assert_close(ChunkedLossLM(model)(input_ids=ids).logits, model(input_ids=ids).logits)
