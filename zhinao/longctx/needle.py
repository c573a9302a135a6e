"""Needle-in-a-haystack evaluation over a grid of context lengths x needle depths (report Fig. 4).

A haystack (here: the stage's corpus, documents in order, repeated as needed) is cut to the
context length, the needle sentence is inserted at a sentence boundary at the requested depth,
the question is asked in the chat format, and the greedy answer is scored like the reference
(Qihoo360/360zhinao `360k/README.md`):

- 100 if the answer matches the preset's pattern (`sandwich.+?dolores.+?sunny`, case-insensitive,
  for the original English needle; `刘秀` for the Chinese one);
- otherwise an edit-distance score: 100 * (1 - Levenshtein(answer, expected) / max(len)), on
  lowercased, whitespace-collapsed text. The reference says only "edit distance"; this
  normalisation to 0..100 is our choice.

Context length counts every prompt token (chat template, haystack, needle and question); the
haystack fills what the rest leaves. The average over the grid is the headline number
(the report's Chat-360K: 98.27 on the English needle, 98.24 on the Chinese one).
"""

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from zhinao.tokenizer import EOD, IM_END, IM_START  # noqa: E402


@dataclass(frozen=True)
class Needle:
    needle: str
    question: str
    pattern: str
    """Regex whose match scores 100."""
    expected: str
    """What the edit distance is measured against when the pattern does not match."""


NEEDLES = {
    "en": Needle(
        needle="The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
        question="What is the best thing to do in San Francisco?",
        pattern=r"sandwich.+?dolores.+?sunny",
        expected="The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
    ),
    "zh": Needle(
        needle="王莽是一名勤奋的店员，他在刘秀的手下工作。",
        question="王莽在谁的手下工作？",
        pattern=r"刘秀",
        expected="王莽在刘秀的手下工作。",
    ),
}

SCORING = (
    "100 if the preset's regex matches the answer (case-insensitive), else "
    "100 * (1 - levenshtein(answer, expected) / max(len(answer), len(expected))) on lowercased, "
    "whitespace-collapsed text"
)


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def score_answer(answer: str, needle: Needle) -> float:
    if re.search(needle.pattern, answer, flags=re.IGNORECASE | re.DOTALL):
        return 100.0
    a, b = _normal(answer), _normal(needle.expected)
    if not a and not b:
        return 100.0
    return 100.0 * max(0.0, 1.0 - levenshtein(a, b) / max(len(a), len(b)))


def grid(
    *, max_length: int, lengths: Sequence[int] | None, min_length: int, num_lengths: int, num_depths: int
) -> tuple[list[int], list[float]]:
    """(context lengths, depths in percent): explicit lengths, or num_lengths evenly spaced up to max_length."""
    if lengths:
        chosen = sorted(set(int(n) for n in lengths))
    else:
        low = min(min_length, max_length)
        chosen = sorted(set(int(round(x)) for x in np.linspace(low, max_length, num_lengths)))
    depths = [float(d) for d in np.linspace(0.0, 100.0, num_depths)] if num_depths > 1 else [50.0]
    return chosen, depths


def insert_needle(
    haystack: Sequence[int], needle: Sequence[int], depth_percent: float, boundaries: set[int]
) -> list[int]:
    """Insert needle tokens at depth_percent of the haystack, moved back to just after the nearest
    sentence-ending token (any id in `boundaries`); at the very start when none precedes it."""
    at = int(len(haystack) * depth_percent / 100.0)
    if 0 < at < len(haystack):
        while at > 0 and haystack[at - 1] not in boundaries:
            at -= 1
    return list(haystack[:at]) + list(needle) + list(haystack[at:])


def sentence_boundary_ids(tokenizer) -> set[int]:
    ends = (".", "。", "!", "?", "！", "？", "\n")
    return {i for i in range(len(tokenizer)) if tokenizer.decode([i]).rstrip(" ").endswith(ends)}


class PromptBuilder:
    """Token-level prompt construction, so that each prompt has exactly the requested length."""

    def __init__(self, tokenizer, haystack_text: str, needle: Needle, *, system: str = "You are a helpful assistant."):
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.prefix = encode(f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n")
        self.needle = encode(f" {needle.needle}\n")
        self.suffix = encode(f"\n\n{needle.question} Answer from the text above.{IM_END}\n{IM_START}assistant\n")
        self.haystack = encode(haystack_text)
        if not self.haystack:
            raise ValueError("the haystack text is empty")
        self.boundaries = sentence_boundary_ids(tokenizer)

    @property
    def overhead(self) -> int:
        return len(self.prefix) + len(self.needle) + len(self.suffix)

    def build(self, length: int, depth_percent: float) -> list[int]:
        room = length - self.overhead
        if room < 1:
            raise ValueError(
                f"context length {length} leaves no room for a haystack (template + needle: {self.overhead})"
            )
        reps = -(-room // len(self.haystack))
        hay = (self.haystack * reps)[:room]
        return self.prefix + insert_needle(hay, self.needle, depth_percent, self.boundaries) + self.suffix


def evaluate(
    model,
    tokenizer,
    haystack_text: str,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    preset: str = "en",
    max_new_tokens: int = 48,
) -> dict:
    """Greedy answers and scores for every (length, depth) cell; the model should be on its device, in eval mode."""
    import torch

    needle = NEEDLES[preset]
    builder = PromptBuilder(tokenizer, haystack_text, needle)
    stop = [tokenizer.convert_tokens_to_ids(t) for t in (EOD, IM_END, IM_START)]
    device = next(model.parameters()).device
    cells = []
    for length in lengths:
        for depth in depths:
            ids = torch.tensor([builder.build(length, depth)], device=device)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop,
                    pad_token_id=stop[0],
                    use_cache=True,
                )
            answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
            cells.append(
                {
                    "length": int(length),
                    "depth": float(depth),
                    "prompt_tokens": int(ids.shape[1]),
                    "score": score_answer(answer, needle),
                    "answer": answer,
                }
            )
    return {
        "preset": preset,
        "needle": needle.needle,
        "question": needle.question,
        "scoring": SCORING,
        "lengths": [int(n) for n in lengths],
        "depths": [float(d) for d in depths],
        "average": float(np.mean([c["score"] for c in cells])) if cells else None,
        "cells": cells,
    }


def heatmap_png(result: dict, *, title: str = "Needle in a haystack") -> bytes:
    """Depth (rows) x context length (columns), score 0 (red) .. 100 (green)."""
    lengths, depths = result["lengths"], result["depths"]
    scores = np.full((len(depths), len(lengths)), np.nan)
    for c in result["cells"]:
        scores[depths.index(c["depth"]), lengths.index(c["length"])] = c["score"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(lengths) + 2.5), max(3.5, 0.35 * len(depths) + 1.5)), dpi=110)
    image = ax.imshow(scores, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45, ha="right")
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    average = result.get("average")
    ax.set_title(f"{title}: average {average:.2f}" if average is not None else title)
    fig.colorbar(image, ax=ax, label="score")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
