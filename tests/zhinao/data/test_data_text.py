"""zhinao.data.text: Chinese and English tokens, paragraphs and sentences."""

import pytest

from zhinao.data.text import (
    estimate_tokens,
    han_count,
    paragraphs,
    sentence_spans,
    split_sentences,
    tokens,
    top_ngram_share,
)


def test_tokens_are_words_numbers_and_single_cjk_characters():
    assert tokens("Don't panic: 3.14 apples, 中文句子 café") == [
        "don't",
        "panic",
        "3.14",
        "apples",
        "中",
        "文",
        "句",
        "子",
        "café",
    ]


@pytest.mark.parametrize(
    "para, expected",
    [
        ("He left. Then he came back! Did he?", ["He left.", "Then he came back!", "Did he?"]),
        ("Pi is 3.14 and e is 2.72. See file.txt now.", ["Pi is 3.14 and e is 2.72.", "See file.txt now."]),
        ("今天下雨了。我们在家看书！你呢？", ["今天下雨了。", "我们在家看书！", "你呢？"]),
        ("He said “yes.” Then left.", ["He said “yes.”", "Then left."]),
        ("no terminal punctuation here", ["no terminal punctuation here"]),
    ],
)
def test_sentences_zh_and_en(para, expected):
    assert [para[s:e].strip() for s, e in sentence_spans(para)] == expected
    bare = lambda x: x.strip().rstrip(".!?。！？”")  # noqa: E731 - split_sentences drops end marks
    assert [bare(s) for s in split_sentences(para)] == [bare(e) for e in expected]


def test_paragraphs_are_nonempty_stripped_lines():
    assert paragraphs("  a  \n\n\tb\n   \n") == ["a", "b"]


def test_top_ngram_share_and_helpers():
    assert top_ngram_share("a b a b a b c".split(), 2) == pytest.approx(6 / 7)
    assert top_ngram_share("a b c d".split(), 1) == 0.0  # nothing repeats
    assert han_count("abc 中文 def") == 2
    assert estimate_tokens(9) == 3
