"""Loss functions of the alignment stages, as pure tensor functions (no model, no I/O).

Conventions: `labels` use IGNORE_INDEX (-100) for untrained positions and are *not* shifted (the
functions shift: the logits at t predict the label at t+1). Per-token tensors of generated
responses come with a float `mask` of the same shape (1 = a response token). docs/alignment.md
writes every formula out.
"""

import torch
import torch.nn.functional as F

from zhinao.chat import IGNORE_INDEX


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label_{t+1} | ..t) for every position, and the mask of trained positions.

    logits (B, T, V), labels (B, T) -> both (B, T-1).
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask.to(logp.dtype)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over trained positions (0 when there are none, not NaN)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    total = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, *, average: bool = False) -> torch.Tensor:
    """Sum (or mean, `average`) of the trained tokens' log-probabilities per sequence: (B,)."""
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(-1) / mask.sum(-1).clamp(min=1) if average else logp.sum(-1)


# ----------------------------------------------------------------------------- reward model


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected - margin), averaged over pairs."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Fraction of pairs with r_chosen > r_rejected (ties count as wrong)."""
    return (chosen > rejected).float().mean().item()


# ------------------------------------------------------------------------------- online RL


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    k1: log pi - log pi_ref (unbiased, can be negative); k3: exp(-d) - 1 + d with d = k1 (>= 0).
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k3":
        return torch.exp(-d) - 1 + d
    raise ValueError(f"unknown KL estimator {kind!r}")


def kl_shaped_return(
    score: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kind: str = "k1",
) -> torch.Tensor:
    """R(y) = score(y) - kl_coef * sum_t KL_t(y): the sequence return with the KL penalty. (B,)"""
    return score - kl_coef * (kl_per_token(logp, ref_logp, kind) * mask).sum(-1)


def remax_loss(
    logp: torch.Tensor, mask: torch.Tensor, sample_return: torch.Tensor, greedy_return: torch.Tensor
) -> torch.Tensor:
    """REINFORCE with the greedy response's return as baseline (ReMax, Li et al. 2023).

    loss = -mean_b[(R(y_b) - R(y_greedy_b)) * sum_t log pi(y_b,t)]; the advantage is a constant
    (no gradient flows through the returns), so the only learned model is the policy.
    """
    advantage = (sample_return - greedy_return).detach()
    return -(advantage * (logp * mask).sum(-1)).mean()


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns (advantages, returns).

    rewards/values/mask are (B, T) with the response left-aligned (mask 1 then 0): a position
    past the end has value 0 and stops the recursion.
    """
    rewards, values, mask = rewards.detach(), values.detach(), mask.to(values.dtype)
    adv = torch.zeros_like(values)
    running = torch.zeros(values.size(0), dtype=values.dtype, device=values.device)
    next_value = torch.zeros_like(running)
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
        next_value = values[:, t] * mask[:, t]
    return adv, adv + values


def ppo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """Clipped surrogate: -mean_t min(rho A, clip(rho, 1-eps, 1+eps) A), rho = pi / pi_old."""
    ratio = torch.exp(logp - old_logp.detach())
    advantages = advantages.detach()
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    return -masked_mean(surrogate, mask)


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """0.5 * mean_t max((V - G)^2, (V_old + clip(V - V_old, -eps, eps) - G)^2)."""
    old_values, returns = old_values.detach(), returns.detach()
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


# ------------------------------------------------------------------------------ offline RL


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """-log sigmoid(beta * [(log pi(yc) - log ref(yc)) - (log pi(yr) - log ref(yr))]), mean over pairs.

    The inputs are summed response log-probabilities per sequence (B,).
    """
    margin = (policy_chosen - ref_chosen.detach()) - (policy_rejected - ref_rejected.detach())
    return -F.logsigmoid(beta * margin).mean()


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) from log p, computed stably (p < 1 for any finite log p < 0)."""
    return mean_logp - torch.log1p(-torch.exp(mean_logp).clamp(max=1 - 1e-6))


def orpo_loss(
    chosen_nll: torch.Tensor, chosen_mean_logp: torch.Tensor, rejected_mean_logp: torch.Tensor, lam: float = 0.1
) -> torch.Tensor:
    """ORPO (Hong et al. 2024): NLL(chosen) + lam * -log sigmoid(log odds(yc) - log odds(yr)).

    `*_mean_logp` are per-token averaged response log-probabilities (B,); `chosen_nll` is the
    SFT loss on the chosen responses (a scalar). No reference model.
    """
    ratio = -F.logsigmoid(log_odds(chosen_mean_logp) - log_odds(rejected_mean_logp)).mean()
    return chosen_nll + lam * ratio
