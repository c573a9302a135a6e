"""Rollout batches and per-token log-probabilities of responses, and the held-out evaluation built on
them (responses come from a rollout engine, zhinao/rollout/)."""

import torch

from zhinao.alignment.data import pad_right
from zhinao.alignment.scoring import Scorer
from zhinao.chat import IGNORE_INDEX
from zhinao.config.rlhf import RLHFParams
from zhinao.losses import token_logprobs
from zhinao.rollout.engine import RolloutEngine, Sampling


def sampling_of(params: RLHFParams) -> Sampling:
    return Sampling(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_k=params.top_k)


def sequence_batch(prompts: list[dict], responses: list[list[int]], pad: int, device) -> dict:
    """prompt + response rows, right-padded; labels on the response tokens only."""
    seqs = [p["_ids"] + r for p, r in zip(prompts, responses)]
    ids, mask = pad_right(seqs, pad, device)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        labels[i, len(p["_ids"]) : len(p["_ids"]) + len(r)] = torch.tensor(r, device=device)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def texts(tokenizer, responses: list[list[int]]) -> list[str]:
    return [tokenizer.decode(r, skip_special_tokens=True) for r in responses]


@torch.no_grad()
def logprobs_of(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return token_logprobs(
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
    )


@torch.no_grad()
def evaluate(
    rollouts: RolloutEngine, prompts: list[dict], scorer: Scorer, params: RLHFParams, tokenizer, device
) -> dict | None:
    """Mean score components on held-out prompts: greedy, and `evalSamples` samples per prompt (seeded)."""
    if not prompts:
        return None
    sampled, greedy = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(params.seed + 7)
        for start in range(0, len(prompts), 64):
            gen = rollouts.generate(
                [p["_ids"] for p in prompts[start : start + 64]],
                sampled=params.eval_samples,
                greedy=True,
                sampling=sampling_of(params),
            )
            sampled, greedy = sampled + gen.sampled, greedy + gen.greedy
    result = {}
    for name, responses, reps in (("greedy", greedy, 1), ("sampled", sampled, params.eval_samples)):
        s = scorer([p for p in prompts for _ in range(reps)], texts(tokenizer, responses))
        result[name] = {k: float(v.float().mean()) for k, v in s.items()}
        # The spread of the checked reward, so that a change can be told from noise (reward_guard).
        result[name].update(rule_std=float(s["rule"].float().std()) if len(responses) > 1 else 0.0, n=len(responses))
    return result
