"""Offline preference optimisation from chosen/rejected pairs: DPO and ORPO share one batch layout
and differ in the loss (DPO needs the frozen reference, ORPO does not)."""

import torch

from zhinao.alignment.data import pad_right
from zhinao.chat import IGNORE_INDEX
from zhinao.config.rlhf import RLHFParams
from zhinao.losses import dpo_loss, lm_loss, orpo_loss, sequence_logprob


def preference_batch(pairs: list[dict], pad: int, device) -> dict:
    """DPO/ORPO batch: chosen rows then rejected rows, labels on the response tokens only."""
    seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    ids, mask = pad_right(seqs, pad, device)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    for i in range(len(seqs)):
        labels[i, : pairs[i % len(pairs)]["prompt_len"]] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def dpo_loss_fn(ref, beta: float, margins: list):
    """DPO against the frozen reference; appends each micro-batch's implicit reward margins to `margins`."""

    def fn(model, b):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        n = len(b["input_ids"]) // 2
        logp = sequence_logprob(logits, b["labels"])
        with torch.no_grad():
            ref_logp = sequence_logprob(
                ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]
            )
        margin = (logp[:n] - ref_logp[:n]) - (logp[n:] - ref_logp[n:])
        margins.append(beta * margin.detach())
        return dpo_loss(logp[:n], logp[n:], ref_logp[:n], ref_logp[n:], beta)

    return fn


def orpo_loss_fn(orpo_lambda: float, margins: list):
    """ORPO (no reference): SFT loss on the chosen rows plus the odds-ratio term; appends the
    per-pair differences of mean log-probabilities to `margins`."""

    def fn(model, b):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        n = len(b["input_ids"]) // 2
        mean_logp = sequence_logprob(logits, b["labels"], average=True)
        margins.append((mean_logp[:n] - mean_logp[n:]).detach())
        return orpo_loss(lm_loss(logits[:n], b["labels"][:n]), mean_logp[:n], mean_logp[n:], orpo_lambda)

    return fn


def preference_loss_fn(params: RLHFParams, ref, margins: list):
    """The loss of `params.algorithm` (dpo or orpo)."""
    if params.algorithm == "dpo":
        return dpo_loss_fn(ref, params.beta, margins)
    return orpo_loss_fn(params.orpo_lambda, margins)
