"""Generation and per-token log-probabilities of responses, and the held-out evaluation built on them."""

import torch

from zhinao.alignment.data import pad_right
from zhinao.alignment.scoring import Scorer
from zhinao.chat import IGNORE_INDEX
from zhinao.config.rlhf import RLHFParams
from zhinao.losses import token_logprobs
from zhinao.tokenizer import EOD, IM_END


@torch.no_grad()
def generate(policy, prompts: list[dict], params: RLHFParams, *, greedy: bool, tokenizer, device) -> list[list[int]]:
    """Response token ids per prompt, cut after the first stop token (kept: the policy chose it)."""
    pad = tokenizer.pad_token_id
    stops = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(EOD)]
    length = max(len(p["_ids"]) for p in prompts)
    ids = torch.full((len(prompts), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding; generate derives position ids from the mask
        ids[i, length - len(p["_ids"]) :] = torch.tensor(p["_ids"])
        mask[i, length - len(p["_ids"]) :] = 1
    was_training = policy.training
    policy.eval()
    sampling = {} if greedy else {"temperature": params.temperature, "top_k": params.top_k, "top_p": 1.0}
    out = policy.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=not greedy,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad,
        use_cache=True,
        **sampling,
    )
    policy.train(was_training)
    responses = []
    for row in out[:, length:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        responses.append(row[:cut])
    return responses


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
def evaluate(policy, prompts: list[dict], scorer: Scorer, params: RLHFParams, tokenizer, device) -> dict | None:
    """Mean score components on held-out prompts: greedy, and `evalSamples` samples per prompt (seeded)."""
    if not prompts:
        return None
    result = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(params.seed + 7)
        for name, greedy, reps in (("greedy", True, 1), ("sampled", False, params.eval_samples)):
            batch = [p for p in prompts for _ in range(reps)]
            responses = []
            for start in range(0, len(batch), 64):
                responses += generate(
                    policy, batch[start : start + 64], params, greedy=greedy, tokenizer=tokenizer, device=device
                )
            s = scorer(batch, texts(tokenizer, responses))
            result[name] = {k: float(v.float().mean()) for k, v in s.items()}
    return result
