"""The reward of a response: a reward model's score plus the rule-checked rewards (zhinao.rule_rewards).

RLHF trains on it and evaluates with it; the ablation's SFT evaluation scores with it, so the
numbers mean the same in both places.
"""

import torch

from zhinao import rule_rewards
from zhinao.alignment.data import pad_right
from zhinao.chat import ChatEncoder, as_messages
from zhinao.config.rlhf import RLHFParams


class Scorer:
    """score(record, response) = rmWeight * RM(prompt, response) + sum_i w_i * rule_i(record, response)."""

    def __init__(self, params: RLHFParams, enc: ChatEncoder, rm, device):
        self.params, self.enc, self.rm, self.device = params, enc, rm, device

    @torch.no_grad()
    def __call__(self, records: list[dict], responses: list[str]) -> dict[str, torch.Tensor]:
        rule = torch.tensor([rule_rewards.score(r, y, self.params.rules) for r, y in zip(records, responses)])
        rm = torch.zeros(len(records))
        if self.rm is not None and self.params.rm_weight > 0:
            seqs = [
                self.enc.completion(as_messages(r["prompt"]), y, system=self.params.system_prompt).input_ids
                for r, y in zip(records, responses)
            ]
            ids, mask = pad_right(seqs, self.enc.tokenizer.pad_token_id, self.device)
            rm = self.rm(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu()
        return {"score": (self.params.rm_weight * rm + rule).to(self.device), "rm": rm, "rule": rule}
