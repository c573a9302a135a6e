"""Needle-in-a-haystack evaluation over a grid of context lengths x needle depths (report Fig. 4).

A haystack (here: the stage's corpus, documents in order, repeated as needed) is cut to the
context length, the needle sentence is inserted at a sentence boundary at the requested depth,
the question is asked in the chat format, and the greedy answer is scored like the reference
(Qihoo360/360zhinao `360k/README.md`):

- 100 if the answer matches the needle's pattern (`sandwich.+?dolores.+?sunny`, case-insensitive,
  for the original English needle; `刘秀` for the Chinese one; the value for `kv`);
- otherwise an edit-distance score: 100 * (1 - Levenshtein(answer, expected) / max(len)), on
  lowercased, whitespace-collapsed text. The reference says only "edit distance"; this
  normalisation to 0..100 is our choice.

Context length counts every prompt token (chat template, haystack, needle and question); the
haystack fills what the rest leaves. The average over the grid is the headline number
(the report's Chat-360K: 98.27 on the English needle, 98.24 on the Chinese one).

Beside the report's two needles, `kv` is the value-retrieval variant (Arize's): every cell hides a
different random key/value pair ("The special magic Paris number is: 4821907.") and asks for the
value, so a model cannot answer from memory of an earlier cell or of its training data.

Scaling. The haystack is streamed: documents are tokenized one at a time, only as far as the
longest prompt needs, never joined into one string. All depths of one length have the same
prompt length, so they are decoded as one batch (no padding). Decoding runs under bf16 autocast
on devices that support it (the KV cache is then bf16: half of fp32's).
"""

import io
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
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

KV_KEYS = (
    "Paris", "Lagos", "Lima", "Oslo", "Hanoi", "Quito", "Dakar", "Perth", "Kyoto", "Porto",
    "Cairo", "Seoul", "Accra", "Bern", "Riga", "Sofia", "Tunis", "Dhaka", "Havana", "Minsk",
)  # fmt: skip


def kv_needle(rng: random.Random) -> Needle:
    """A random key/value needle: the answer is a 7-digit number no model can know beforehand."""
    key, value = rng.choice(KV_KEYS), str(rng.randrange(1_000_000, 10_000_000))
    return Needle(
        needle=f"The special magic {key} number is: {value}.",
        question=f"What is the special magic {key} number?",
        pattern=re.escape(value),
        expected=value,
    )


def needle_for(preset: str, *, length: int, depth: float, seed: int) -> Needle:
    """The needle of one cell: the preset's fixed one, or for `kv` a pair drawn from (seed, cell)."""
    if preset == "kv":
        return kv_needle(random.Random(f"{seed}:{length}:{depth}"))
    return NEEDLES[preset]


SCORING = (
    "100 if the needle's regex matches the answer (case-insensitive), else "
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


class Haystack:
    """Token ids of a stream of documents, tokenized lazily and cycled when the stream runs out."""

    def __init__(self, documents: Callable[[], Iterable[str]], encode: Callable[[str], list[int]]):
        self._documents, self._encode = documents, encode
        self._stream: Iterator[str] = iter(documents())
        self._tokens: list[int] = []

    def take(self, n: int) -> list[int]:
        """The first n tokens (documents separated by a newline, repeated from the start as needed)."""
        restarted = False
        while len(self._tokens) < n:
            text = next(self._stream, None)
            if text is None:
                if restarted or not self._tokens:
                    raise ValueError("the haystack text is empty")
                self._stream, restarted = iter(self._documents()), True
                continue
            restarted = False
            self._tokens.extend(self._encode(text + "\n"))
        return self._tokens[:n]


class PromptBuilder:
    """Token-level prompt construction, so that each prompt has exactly the requested length.

    haystack: one text, or a function returning a fresh iterable of document texts (the corpus).
    """

    def __init__(
        self,
        tokenizer,
        haystack: str | Callable[[], Iterable[str]],
        *,
        system: str = "You are a helpful assistant.",
    ):
        self.encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.prefix = self.encode(f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n")
        documents = (lambda: [haystack]) if isinstance(haystack, str) else haystack
        self.haystack = Haystack(documents, self.encode)
        self.boundaries = sentence_boundary_ids(tokenizer)

    def parts(self, needle: Needle) -> tuple[list[int], list[int]]:
        """(needle tokens, question suffix tokens)."""
        suffix = f"\n\n{needle.question} Answer from the text above.{IM_END}\n{IM_START}assistant\n"
        return self.encode(f" {needle.needle}\n"), self.encode(suffix)

    def overhead(self, needle: Needle) -> int:
        return len(self.prefix) + sum(len(p) for p in self.parts(needle))

    def build(self, length: int, depth_percent: float, needle: Needle) -> list[int]:
        needle_ids, suffix = self.parts(needle)
        room = length - len(self.prefix) - len(needle_ids) - len(suffix)
        if room < 1:
            raise ValueError(
                f"context length {length} leaves no room for a haystack (template + needle: {self.overhead(needle)})"
            )
        hay = self.haystack.take(room)
        return self.prefix + insert_needle(hay, needle_ids, depth_percent, self.boundaries) + suffix


def _autocast(device, precision: str):
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(
    model,
    tokenizer,
    haystack: str | Callable[[], Iterable[str]],
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    preset: str = "en",
    max_new_tokens: int = 48,
    batch_size: int = 8,
    precision: str = "bf16",
    seed: int = 0,
    sp=None,
) -> dict:
    """Greedy answers and scores for every (length, depth) cell; the model should be on its device, in eval mode.

    Cells of one length go through generate() batch_size at a time; precision `bf16` decodes
    under bf16 autocast, `fp32` without. sp: a SequenceParallel group of more than one rank runs
    every cell across the group (ring prefill, distributed KV cache: zhinao.longctx.sp_generate);
    all its ranks call evaluate alike, with the model on the ring attention.
    """
    import torch

    builder = PromptBuilder(tokenizer, haystack)
    stop = [tokenizer.convert_tokens_to_ids(t) for t in (EOD, IM_END, IM_START)]
    device = next(model.parameters()).device
    cells = []
    for length in lengths:
        for first in range(0, len(depths), batch_size):
            batch = [
                (depth, needle_for(preset, length=length, depth=depth, seed=seed))
                for depth in depths[first : first + batch_size]
            ]
            ids = torch.tensor([builder.build(length, depth, needle) for depth, needle in batch], device=device)
            with torch.no_grad(), _autocast(device, precision):
                if sp is not None and sp.size > 1:
                    from zhinao.longctx import sp_generate

                    new = sp_generate.generate(model, ids, sp, max_new_tokens=max_new_tokens, stop_ids=stop)
                else:
                    new = model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        eos_token_id=stop,
                        pad_token_id=stop[0],
                        use_cache=True,
                    )[:, ids.shape[1] :]
            for row, (depth, needle) in enumerate(batch):
                answer = tokenizer.decode(new[row], skip_special_tokens=True).strip()
                cells.append(
                    {
                        "length": int(length),
                        "depth": float(depth),
                        "prompt_tokens": int(ids.shape[1]),
                        "score": score_answer(answer, needle),
                        "answer": answer,
                        **({"expected": needle.expected} if preset == "kv" else {}),
                    }
                )
    needle = needle_for(preset, length=0, depth=0.0, seed=seed)
    return {
        "preset": preset,
        "needle": needle.needle if preset != "kv" else "The special magic {key} number is: {value}.",
        "question": needle.question if preset != "kv" else "What is the special magic {key} number?",
        "scoring": SCORING,
        "precision": precision,
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
