"""Every alignment loss against values computed by hand (or with plain math) on tiny inputs."""

import math

import pytest
import torch

from zhinao import losses as L

X = -100


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_lm_loss_shifts_and_ignores_masked_positions():
    # vocab 2; logits at t predict label at t+1.
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[X, 1, 0]])
    # position 0 predicts label 1 with uniform logits: ln 2; position 1 predicts 0 with (2, 0): -log softmax
    want = (math.log(2) + (-(2 - math.log(math.exp(2) + 1)))) / 2
    assert L.lm_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)
    assert L.lm_loss(logits, torch.full((1, 3), X)).item() == 0.0  # no targets: 0, not NaN


def test_token_and_sequence_logprobs():
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[X, 1, 1]])
    logp, mask = L.token_logprobs(logits, labels)
    assert logp[0].tolist() == pytest.approx([math.log(0.75), math.log(0.5)])
    assert mask.tolist() == [[1.0, 1.0]]
    assert L.sequence_logprob(logits, labels).item() == pytest.approx(math.log(0.75 * 0.5))
    assert L.sequence_logprob(logits, labels, average=True).item() == pytest.approx(math.log(0.375) / 2)


def test_bradley_terry_and_accuracy():
    c, r = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    want = (-math.log(sig(1.0)) - math.log(sig(-1.0))) / 2
    assert L.bradley_terry_loss(c, r).item() == pytest.approx(want)
    assert L.bradley_terry_loss(c, r, margin=0.5).item() == pytest.approx(
        (-math.log(sig(0.5)) - math.log(sig(-1.5))) / 2
    )
    assert L.pairwise_accuracy(c, r) == 0.5
    assert L.pairwise_accuracy(torch.tensor([1.0]), torch.tensor([1.0])) == 0.0


def test_kl_estimators_and_shaped_return():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert L.kl_per_token(logp, ref, "k1").tolist() == [[0.5, -1.0]]
    k3 = L.kl_per_token(logp, ref, "k3")[0].tolist()
    assert k3 == pytest.approx([math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0])
    mask = torch.tensor([[1.0, 0.0]])
    # R = score - beta * sum of masked per-token KL = 1 - 0.1 * 0.5
    assert L.kl_shaped_return(torch.tensor([1.0]), logp, ref, mask, 0.1).item() == pytest.approx(0.95)


def test_remax_loss_is_advantage_times_sequence_logprob_with_no_grad_through_returns():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    ret, base = torch.tensor([1.0, 0.0], requires_grad=True), torch.tensor([0.0, 0.5])
    loss = L.remax_loss(logp, mask, ret, base)
    # -(1 * (-3) + (-0.5) * (-0.5)) / 2
    assert loss.item() == pytest.approx(-(-3.0 + 0.25) / 2)
    loss.backward()
    assert logp.grad.tolist() == [[-0.5, -0.5], [0.25, 0.0]]
    assert ret.grad is None


def test_gae_matches_the_recursion():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.7
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = L.gae(rewards, values, mask, gamma, lam)
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])
    # A padded position neither gets an advantage nor leaks value into the last real token.
    adv2, _ = L.gae(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.2, 5.0]]), torch.tensor([[1.0, 0.0]]), 1.0, 1.0)
    assert adv2[0].tolist() == pytest.approx([0.8, 0.0])


def test_ppo_policy_and_value_losses_clip():
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, 1.0]])
    mask = torch.ones(1, 2)
    # min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5 -> -(1.2 + 0.5)/2
    assert L.ppo_policy_loss(new, old, adv, mask, clip=0.2).item() == pytest.approx(-0.85)
    # negative advantage: min(-1.5, -1.2) = -1.5; min(-0.5, -0.8) = -0.8 -> (1.5 + 0.8)/2
    assert L.ppo_policy_loss(new, old, -adv, mask, clip=0.2).item() == pytest.approx(1.15)
    values, old_v, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 1.0]])
    # t0: unclipped (1-0.5)^2=0.25, clipped (0.2-0.5)^2=0.09 -> 0.25; t1: both (0-1)^2 = 1 -> 0.5*(0.25+1)/2
    assert L.ppo_value_loss(values, old_v, returns, mask, clip=0.2).item() == pytest.approx(0.3125)


def test_dpo_loss():
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    # margin = (-1 + 2) - (-3 + 2) = 2; loss = -log sigmoid(0.1 * 2)
    assert L.dpo_loss(pc, pr, rc, rr, beta=0.1).item() == pytest.approx(-math.log(sig(0.2)))


def test_orpo_loss():
    pc, pr = math.log(0.5), math.log(0.2)
    lo = math.log(0.5 / 0.5) - math.log(0.2 / 0.8)
    want = 1.3 + 0.1 * -math.log(sig(lo))
    got = L.orpo_loss(torch.tensor(1.3), torch.tensor([pc]), torch.tensor([pr]), lam=0.1)
    assert got.item() == pytest.approx(want, rel=1e-5)
