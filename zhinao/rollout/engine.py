"""The interface between the online RL loop and whatever generates its responses.

The loop hands over every prompt of a rollout step at once and asks for `sampled` responses per
prompt plus (ReMax) one greedy response, in one call; an engine may batch them however it likes.
After each optimizer update the loop calls `sync(model)`, so an engine that holds its own copy of
the weights (vLLM) serves the updated policy; one that generates with the training module itself
has nothing to do.
"""

from dataclasses import dataclass
from typing import Protocol

import torch

from zhinao.tokenizer import EOD, IM_END, IM_START

STOP_TOKENS = (IM_END, EOD, IM_START)
"""The report's three serving stop words: a response ends at the first of them (kept in the
response, since the policy chose it; `<|im_start|>` means the model began a new turn)."""


def stop_token_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    """0: sample from the full distribution."""


@dataclass(frozen=True)
class Generation:
    sampled: list[list[int]]
    """Response ids, prompt-major: the `sampled` responses of prompt 0, then of prompt 1, ..."""

    greedy: list[list[int]]
    """One greedy response per prompt (empty when none was asked for)."""

    tokens: int
    """Response tokens generated (both kinds), for throughput figures."""


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], *, sampled: int, greedy: bool, sampling: Sampling) -> Generation: ...

    def sync(self, model: torch.nn.Module) -> None:
        """Make the engine serve `model`'s current weights (called after every optimizer update)."""
        ...


def cut_at_stop(row: list[int], stops: list[int]) -> list[int]:
    """The response up to and including its first stop token (all of it when there is none)."""
    cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
    return row[:cut]
