"""PPO (online RL) with a critic: rollouts with GAE advantages, the clipped policy and value losses."""

import torch
from transformers import AutoConfig, AutoModelForTokenClassification

from zhinao.alignment.rollout import logprobs_of, sequence_batch, texts
from zhinao.config.rlhf import RLHFParams
from zhinao.losses import gae, kl_per_token, masked_mean, ppo_policy_loss, ppo_value_loss, token_logprobs
from zhinao.model import attention_implementation
from zhinao.training.optim import param_groups


class ActorCritic(torch.nn.Module):
    """Policy and critic trained by one optimizer step (so DDP sees one forward per micro-batch)."""

    def __init__(self, policy, critic):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, input_ids, attention_mask):
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask).logits
        values = self.critic(input_ids=input_ids, attention_mask=attention_mask).logits[..., 0].float()
        return logits, values

    def exported(self, state_dict: dict) -> tuple[torch.nn.Module, dict]:
        """What the hf/ export holds: the policy and its weights. The next stage needs the policy;
        the critic lives on in checkpoints."""
        return self.policy, {k[len("policy.") :]: v for k, v in state_dict.items() if k.startswith("policy.")}


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def rollout(ac: ActorCritic, ref, prompts, generated, scorer, params, tokenizer, device) -> tuple[dict, dict]:
    """`generated`: (one sampled response per prompt,)."""
    responses = generated[0]
    batch = sequence_batch(prompts, responses, tokenizer.pad_token_id, device)
    with torch.no_grad():
        logits, values = ac(batch["input_ids"], batch["attention_mask"])
        old_logp, mask = token_logprobs(logits, batch["labels"])
        ref_logp, _ = logprobs_of(ref, batch)
    old_values = values[:, :-1] * mask
    s = scorer(prompts, texts(tokenizer, responses))
    kl = kl_per_token(old_logp, ref_logp, params.kl_estimator) * mask
    rewards = -params.kl_coef * kl
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)  # the final response token
    rewards = rewards + last * s["score"][:, None]
    # GAE wants responses left-aligned: shift each row so its response starts at column 0.
    start = mask.argmax(-1)
    cols = (torch.arange(mask.size(1), device=device)[None] + start[:, None]).clamp(max=mask.size(1) - 1)
    gather = lambda x: torch.gather(x, 1, cols)  # noqa: E731
    adv_l, ret_l = gae(gather(rewards), gather(old_values), gather(mask), params.gamma, params.lam)
    adv, ret = torch.zeros_like(adv_l), torch.zeros_like(ret_l)
    adv.scatter_(1, cols, adv_l * gather(mask))
    ret.scatter_(1, cols, ret_l * gather(mask))
    train = {
        **batch,
        "old_logp": old_logp,
        "old_values": old_values,
        "adv": whiten(adv, mask),
        "ret": ret,
        "mask": mask,
    }
    stats = {
        "reward_mean": s["score"].mean().item(),
        "reward_rule_mean": s["rule"].mean().item(),
        "reward_rm_mean": s["rm"].mean().item(),
        "kl": kl.sum(-1).mean().item(),
        "response_tokens": mask.sum(-1).mean().item(),
        "value_mean": masked_mean(old_values, mask).item(),
    }
    return train, stats


def loss_fn(params: RLHFParams):
    def fn(model, b):
        logits, values = model(b["input_ids"], b["attention_mask"])
        logp, mask = token_logprobs(logits, b["labels"])
        return ppo_policy_loss(
            logp, b["old_logp"], b["adv"], mask, params.clip_range
        ) + params.vf_coef * ppo_value_loss(values[:, :-1], b["old_values"], b["ret"], mask, params.value_clip)

    return fn


def actor_critic(policy, critic_init, params: RLHFParams) -> tuple[ActorCritic, list[dict]]:
    """The policy with a critic loaded from `critic_init` (seeded value head), and their parameter
    groups (the critic trains at criticLr)."""
    torch.manual_seed(params.seed)
    config = AutoConfig.from_pretrained(critic_init, num_labels=1)
    config.classifier_dropout = 0.0  # values must not be noisy
    critic = AutoModelForTokenClassification.from_pretrained(
        critic_init, config=config, dtype=torch.float32, attn_implementation=attention_implementation(params.attention)
    )
    groups = [{**g, "lr": params.lr} for g in param_groups(policy, params.weight_decay)] + [
        {**g, "lr": params.critic_lr} for g in param_groups(critic, params.weight_decay)
    ]
    return ActorCritic(policy, critic), groups
