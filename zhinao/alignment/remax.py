"""ReMax (online RL): a sampled response's KL-shaped return minus the greedy response's as baseline."""

from zhinao.alignment.rollout import logprobs_of, sequence_batch, texts
from zhinao.losses import kl_per_token, kl_shaped_return, remax_loss, token_logprobs


def rollout(policy, ref, prompts, generated, scorer, params, tokenizer, device) -> tuple[dict, dict]:
    """`generated`: (one sampled response per prompt, one greedy response per prompt).

    Both rows of every prompt are scored together: one policy, one reference and one reward-model
    pass over a batch of 2 x len(prompts) rows, instead of one pass per kind of row.
    """
    sampled, greedy = generated
    n, pad = len(prompts), tokenizer.pad_token_id
    both = sequence_batch(prompts + prompts, sampled + greedy, pad, device)
    logp, mask = logprobs_of(policy, both)
    ref_logp, _ = logprobs_of(ref, both)
    score = scorer(prompts + prompts, texts(tokenizer, sampled + greedy))
    ret = kl_shaped_return(score["score"], logp, ref_logp, mask, params.kl_coef, params.kl_estimator)
    # The update sees the sampled rows only, padded to their own length (not the greedy rows').
    train = {**sequence_batch(prompts, sampled, pad, device), "ret": ret[:n], "baseline": ret[n:]}
    kl = (kl_per_token(logp[:n], ref_logp[:n], params.kl_estimator) * mask[:n]).sum(-1)
    stats = {
        "reward_mean": score["score"][:n].mean().item(),
        "reward_greedy_mean": score["score"][n:].mean().item(),
        "reward_rule_mean": score["rule"][:n].mean().item(),
        "reward_rm_mean": score["rm"][:n].mean().item(),
        "kl": kl.mean().item(),
        "response_tokens": mask[:n].sum(-1).mean().item(),
        "advantage_mean": (ret[:n] - ret[n:]).mean().item(),
    }
    return train, stats


def loss_fn(params=None):
    """The policy-gradient loss of a rollout batch (ReMax has no knobs here; `params` keeps PPO's signature)."""

    def fn(model, b):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logp, mask = token_logprobs(logits, b["labels"])
        return remax_loss(logp, mask, b["ret"], b["baseline"])

    return fn
