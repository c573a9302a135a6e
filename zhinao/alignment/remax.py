"""ReMax (online RL): a sampled response's KL-shaped return minus the greedy response's as baseline."""

from zhinao.alignment.rollout import logprobs_of, sequence_batch, texts
from zhinao.losses import kl_per_token, kl_shaped_return, remax_loss, token_logprobs


def rollout(policy, ref, prompts, generated, scorer, params, tokenizer, device) -> tuple[dict, dict]:
    """`generated`: (one sampled response per prompt, one greedy response per prompt)."""
    pad = tokenizer.pad_token_id
    rollouts = {}
    for kind, responses in zip(("sample", "greedy"), generated):
        batch = sequence_batch(prompts, responses, pad, device)
        logp, mask = logprobs_of(policy, batch)
        ref_logp, _ = logprobs_of(ref, batch)
        s = scorer(prompts, texts(tokenizer, responses))
        rollouts[kind] = dict(
            batch=batch,
            mask=mask,
            score=s,
            logp=logp,
            ref_logp=ref_logp,
            ret=kl_shaped_return(s["score"], logp, ref_logp, mask, params.kl_coef, params.kl_estimator),
        )
    sample, greedy = rollouts["sample"], rollouts["greedy"]
    train = {**sample["batch"], "ret": sample["ret"], "baseline": greedy["ret"]}
    kl = (kl_per_token(sample["logp"], sample["ref_logp"], params.kl_estimator) * sample["mask"]).sum(-1)
    stats = {
        "reward_mean": sample["score"]["score"].mean().item(),
        "reward_greedy_mean": greedy["score"]["score"].mean().item(),
        "reward_rule_mean": sample["score"]["rule"].mean().item(),
        "reward_rm_mean": sample["score"]["rm"].mean().item(),
        "kl": kl.mean().item(),
        "response_tokens": sample["mask"].sum(-1).mean().item(),
        "advantage_mean": (sample["ret"] - greedy["ret"]).mean().item(),
    }
    return train, stats


def loss_fn(params=None):
    """The policy-gradient loss of a rollout batch (ReMax has no knobs here; `params` keeps PPO's signature)."""

    def fn(model, b):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logp, mask = token_logprobs(logits, b["labels"])
        return remax_loss(logp, mask, b["ret"], b["baseline"])

    return fn
