"""Long-context training data: packed long documents and synthetic long QA conversations.

Continual pretraining (report section 3.1.3) packs documents into long sequences the way
pretraining does (section 2.4): concatenated within one source, separated by <eod>, cut to the
sequence length (`zhinao.data.packing.pack_source`).

The synthetic long SFT data follows the two recipes the report names, built from the corpus
itself and fully deterministic given a seed:

- multi-document QA (Ziya-Reader style): several numbered documents in one context and several
  QA pairs about them, one per turn;
- multi-turn single-document QA (Llama-2-Long style): one long text cut into numbered segments
  and one turn per segment, each turn about a different segment.

The report's questions and answers were written by models and people; here they are extractive
templates whose answers are verbatim in the context (which document or segment holds a quoted
sentence, which sentence follows it, what a document or segment opens with). They teach retrieval
over long contexts, not knowledge. Conversations use the 360Zhinao chat format
`<|im_start|>{role}\\n{content}<|im_end|>\\n`.
"""

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from zhinao.tokenizer import IM_END, IM_START

DEFAULT_SYSTEM = "You are a helpful assistant."
"""finetune.py's default system prompt in the 360Zhinao repository."""

MIN_QUOTE_CHARS = 20
"""Sentences shorter than this are not quoted: too likely to occur twice."""

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")

Message = dict[str, str]
CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class SourceDocument:
    text: str
    source: str


def render_chat(messages: Sequence[Message], *, system: str | None = DEFAULT_SYSTEM) -> str:
    """The 360Zhinao chat format; a leading system turn is added unless one is present or system is None."""
    turns = list(messages)
    if system is not None and (not turns or turns[0]["role"] != "system"):
        turns.insert(0, {"role": "system", "content": system})
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in turns)


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _quotable(sentences: list[str], *, need_next: bool) -> list[int]:
    stop = len(sentences) - 1 if need_next else len(sentences)
    unique = {s for s in sentences if sentences.count(s) == 1}
    return [i for i in range(stop) if len(sentences[i]) >= MIN_QUOTE_CHARS and sentences[i] in unique]


def _qa_about(
    unit: str, label: str, sentences: list[str], rng: random.Random, *, others: Sequence[list[str]]
) -> Message:
    """One extractive question about `sentences` (a document or a segment called `unit` `label`)."""
    kinds = ["opening"]
    if _quotable(sentences, need_next=True):
        kinds.append("next")
    # "which unit holds this sentence" only when the sentence is in no other unit
    locatable = [i for i in _quotable(sentences, need_next=False) if not any(sentences[i] in o for o in others)]
    if locatable:
        kinds.append("locate")
    kind = rng.choice(kinds)
    if kind == "next":
        i = rng.choice(_quotable(sentences, need_next=True))
        return {
            "question": f"In {unit} {label}, which sentence comes right after “{sentences[i]}”?",
            "answer": sentences[i + 1],
        }
    if kind == "locate":
        i = rng.choice(locatable)
        return {
            "question": f"Which {unit} contains the sentence “{sentences[i]}”? Answer with its number.",
            "answer": f"{unit.capitalize()} {label}.",
        }
    return {"question": f"Quote the first sentence of {unit} {label}.", "answer": sentences[0]}


def _conversation(context: str, qas: list[Message]) -> list[Message]:
    messages = []
    for i, qa in enumerate(qas):
        messages.append({"role": "user", "content": f"{context}\n\n{qa['question']}" if i == 0 else qa["question"]})
        messages.append({"role": "assistant", "content": qa["answer"]})
    return messages


def multi_doc_qa(documents: Sequence[str], *, n_questions: int, rng: random.Random) -> list[Message]:
    """Documents numbered [1]..[n] in the first user turn, one question per turn about a random document."""
    sentences = [split_sentences(d) for d in documents]
    context = "Answer the questions using the documents below.\n\n" + "\n\n".join(
        f"Document [{i + 1}]:\n{d}" for i, d in enumerate(documents)
    )
    qas = []
    for _ in range(n_questions):
        k = rng.randrange(len(documents))
        others = [s for j, s in enumerate(sentences) if j != k]
        qas.append(_qa_about("document", f"[{k + 1}]", sentences[k], rng, others=others))
    return _conversation(context, qas)


def segment(text: str, n_segments: int) -> list[str]:
    """Cut a text into up to n_segments runs of whole sentences of about equal character length."""
    sentences = split_sentences(text)
    n = max(1, min(n_segments, len(sentences)))
    target = sum(len(s) for s in sentences) / n
    segments: list[list[str]] = [[]]
    size = 0
    for s in sentences:
        if size >= target and len(segments) < n:
            segments.append([])
            size = 0
        segments[-1].append(s)
        size += len(s)
    return [" ".join(seg) for seg in segments]


def single_doc_qa(text: str, *, n_questions: int, rng: random.Random) -> list[Message]:
    """One long text in numbered segments; each turn asks about a different segment."""
    segments = segment(text, max(2, n_questions))
    sentences = [split_sentences(s) for s in segments]
    context = "Read the text below, split into numbered segments, and answer the questions.\n\n" + "\n\n".join(
        f"[Segment {i + 1}]\n{s}" for i, s in enumerate(segments)
    )
    order = rng.sample(range(len(segments)), k=len(segments))
    qas = []
    for t in range(n_questions):
        k = order[t % len(order)]
        others = [s for j, s in enumerate(sentences) if j != k]
        qas.append(_qa_about("segment", str(k + 1), sentences[k], rng, others=others))
    return _conversation(context, qas)


def _fill(
    candidates: Sequence[SourceDocument], lengths: Sequence[int], budget: int, start: int, step: int
) -> list[int]:
    """Indices from `start` walking by `step` (cyclically) until the token budget is used."""
    chosen, used = [], 0
    for n in range(len(candidates)):
        i = (start + n * step) % len(candidates)
        if chosen and used + lengths[i] > budget:
            break
        chosen.append(i)
        used += lengths[i]
    return chosen


def synthesize_long_qa(
    documents: Sequence[SourceDocument],
    *,
    n_samples: int,
    n_questions: int,
    budget_tokens: int,
    count_tokens: CountTokens,
    seed: int,
) -> list[dict]:
    """`n_samples` conversations, alternating multi-doc and single-doc QA, each with a context of at
    most about `budget_tokens` (at least one whole document).

    Multi-doc rows draw documents from the whole corpus; single-doc rows take one long text: a run of
    consecutive documents of one source (a single document when it alone fills the budget).
    Returns [{"kind", "sources", "messages"}] in the order generated.
    """
    docs = [d for d in documents if split_sentences(d.text)]
    if not docs or n_samples == 0:
        return []
    lengths = [count_tokens(d.text) for d in docs]
    by_source: dict[str, list[int]] = {}
    for i, d in enumerate(docs):
        by_source.setdefault(d.source, []).append(i)
    sources = sorted(by_source)
    rng = random.Random(seed)
    rows = []
    for n in range(n_samples):
        if n % 2 == 0:
            # A coprime stride visits documents in a scattered but repeatable order.
            step = rng.choice([s for s in range(1, len(docs) + 1) if np.gcd(s, len(docs)) == 1])
            picked = _fill(docs, lengths, budget_tokens, rng.randrange(len(docs)), step)
            if len(picked) < 2 and len(docs) > 1:
                picked = [picked[0], (picked[0] + step) % len(docs)]
            rows.append(
                {
                    "kind": "multi_doc_qa",
                    "sources": sorted({docs[i].source for i in picked}),
                    "messages": multi_doc_qa([docs[i].text for i in picked], n_questions=n_questions, rng=rng),
                }
            )
        else:
            source = rng.choice(sources)
            members = by_source[source]
            run = _fill(
                [docs[i] for i in members], [lengths[i] for i in members], budget_tokens, rng.randrange(len(members)), 1
            )
            text = "\n".join(docs[members[i]].text for i in run)
            rows.append(
                {
                    "kind": "single_doc_qa",
                    "sources": [source],
                    "messages": single_doc_qa(text, n_questions=n_questions, rng=rng),
                }
            )
    return rows


def mix_sequences(corpus: np.ndarray, synthetic: np.ndarray, *, ratio: float, seed: int) -> np.ndarray:
    """Corpus sequences plus enough synthetic ones that they are `ratio` of the result (as far as
    there are synthetic sequences). The trainer shuffles; the order here is corpus then synthetic."""
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    want = int(round(ratio / (1 - ratio) * len(corpus)))
    take = min(want, len(synthetic))
    if take == 0:
        return corpus
    chosen = np.sort(np.random.default_rng(seed).permutation(len(synthetic))[:take])
    return np.concatenate([corpus, synthetic[chosen]])
