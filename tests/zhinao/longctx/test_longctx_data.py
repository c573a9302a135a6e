"""Synthetic long QA (multi-doc, multi-turn single-doc) and the sequence mix: deterministic and extractive."""

import numpy as np
import pytest

from zhinao.longctx.data import (
    SourceDocument,
    mix_sequences,
    multi_doc_qa,
    render_chat,
    segment,
    split_sentences,
    synthesize_long_qa,
)

DOCS = [
    SourceDocument(
        f"Topic {i} opens with a long enough first sentence. The value of item {i} is {i * 7} units today. "
        f"Nothing else about topic {i} is worth a mention here.",
        "web" if i % 3 else "books",
    )
    for i in range(12)
]
WORDS = lambda text: len(text.split())  # noqa: E731


def test_chat_format_is_360zhinao():
    text = render_chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    )
    assert render_chat([{"role": "user", "content": "x"}], system=None) == "<|im_start|>user\nx<|im_end|>\n"


def test_same_seed_same_data_other_seed_other_data():
    kw = dict(n_samples=6, n_questions=3, budget_tokens=80, count_tokens=WORDS)
    a, b = synthesize_long_qa(DOCS, seed=1, **kw), synthesize_long_qa(DOCS, seed=1, **kw)
    assert a == b and a != synthesize_long_qa(DOCS, seed=2, **kw)
    assert [r["kind"] for r in a] == ["multi_doc_qa", "single_doc_qa"] * 3


def test_conversations_are_multi_turn_within_budget_and_answers_are_in_the_context():
    rows = synthesize_long_qa(DOCS, n_samples=8, n_questions=3, budget_tokens=80, count_tokens=WORDS, seed=5)
    for row in rows:
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        context = messages[0]["content"]
        for m in messages[1::2]:
            answer = m["content"]
            assert answer in context or answer.rstrip(".") in context, (row["kind"], answer)
        if row["kind"] == "multi_doc_qa":
            assert "Document [2]" in context
            assert WORDS(context) <= 80 + 40  # budget counts documents; headers and instructions come on top
        else:
            assert len(row["sources"]) == 1 and "[Segment 2]" in context


def test_multi_doc_locate_answers_name_the_document_holding_the_quote():
    docs = [d.text for d in DOCS[:4]]
    import random

    for seed in range(20):
        msgs = multi_doc_qa(docs, n_questions=4, rng=random.Random(seed))
        for q, a in zip(msgs[0::2], msgs[1::2]):
            if "Which document contains" in q["content"]:
                quote = q["content"].split("“")[-1].split("”")[0]
                k = int(a["content"].split("[")[1].split("]")[0])
                assert quote in docs[k - 1] and sum(quote in d for d in docs) == 1


def test_segments_keep_every_sentence_in_order():
    text = " ".join(f"Sentence number {i} is here." for i in range(10))
    parts = segment(text, 4)
    assert len(parts) == 4
    assert split_sentences(" ".join(parts)) == split_sentences(text)


def test_mix_reaches_the_ratio_and_is_deterministic():
    corpus = np.zeros((30, 4), dtype=np.uint32)
    synthetic = np.arange(40, dtype=np.uint32).reshape(10, 4) + 1
    mixed = mix_sequences(corpus, synthetic, ratio=0.25, seed=0)
    assert len(mixed) == 40 and (mixed[30:] > 0).all()
    assert np.array_equal(mixed, mix_sequences(corpus, synthetic, ratio=0.25, seed=0))
    assert len(mix_sequences(corpus, synthetic, ratio=0.9, seed=0)) == 40  # capped by what exists
    assert mix_sequences(corpus, synthetic, ratio=0.0, seed=0) is corpus
    with pytest.raises(ValueError):
        mix_sequences(corpus, synthetic, ratio=1.0, seed=0)
