"""Needle in a haystack: grid, needle placement, scoring like the reference, heat map."""

import pytest

from zhinao.longctx.needle import (
    NEEDLES,
    PromptBuilder,
    evaluate,
    grid,
    heatmap_png,
    insert_needle,
    levenshtein,
    score_answer,
)


def test_reference_grid_shape():
    lengths, depths = grid(max_length=360000, lengths=None, min_length=1024, num_lengths=10, num_depths=21)
    assert lengths[0] == 1024 and lengths[-1] == 360000 and len(lengths) == 10
    assert depths == [5.0 * i for i in range(21)]
    assert grid(max_length=256, lengths=[300, 100, 100], min_length=1024, num_lengths=3, num_depths=1) == (
        [100, 300],
        [50.0],
    )


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Eat a sandwich and sit in Dolores Park on a sunny day.", 100.0),
        ("The best thing is a SANDWICH in dolores park when sunny", 100.0),
        (NEEDLES["en"].expected.replace("sunny", "rainy"), None),  # no regex match: edit-distance score
        ("", 0.0),
    ],
)
def test_english_scoring(answer, expected):
    score = score_answer(answer, NEEDLES["en"])
    if expected is None:
        assert score == pytest.approx(100 * (1 - 3 / len(NEEDLES["en"].expected)))  # s,u,n -> r,a,i
    else:
        assert score == expected


def test_chinese_scoring_and_levenshtein():
    assert score_answer("王莽在刘秀的手下工作", NEEDLES["zh"]) == 100.0
    assert 0 < score_answer("王莽在刘邦的手下工作。", NEEDLES["zh"]) < 100
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3


def test_needle_goes_after_the_nearest_sentence_end_before_the_depth():
    hay = [1, 2, 9, 3, 4, 5, 9, 6, 7, 8]  # 9 ends a sentence
    assert insert_needle(hay, [0], 0, {9}) == [0] + hay
    assert insert_needle(hay, [0], 100, {9}) == hay + [0]
    assert insert_needle(hay, [0], 55, {9}) == [1, 2, 9, 0, 3, 4, 5, 9, 6, 7, 8]
    assert insert_needle(hay, [0], 75, {9}) == [1, 2, 9, 3, 4, 5, 9, 0, 6, 7, 8]


class CharTokenizer:
    """One token per character; ids 0-2 are the special tokens."""

    SPECIAL = ["<eod>", "<|im_end|>", "<|im_start|>"]

    def __init__(self, alphabet: str):
        self.vocab = self.SPECIAL + sorted(set(alphabet))

    def __len__(self):
        return len(self.vocab)

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            special = next((s for s in self.SPECIAL if text.startswith(s, i)), None)
            ids.append(self.vocab.index(special or text[i]))
            i += len(special or text[i])
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.vocab[i] for i in ids if not (skip_special_tokens and i < 3))

    def convert_tokens_to_ids(self, token):
        return self.vocab.index(token)


class EchoModel:
    """Stands in for a model that retrieves perfectly: answers with the needle found in its prompt."""

    def __init__(self, tokenizer, needle_ids):
        import torch

        self.tokenizer, self.needle, self.param = tokenizer, needle_ids, torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        yield self.param

    def generate(self, input_ids, max_new_tokens, **_):
        import torch

        row = input_ids[0].tolist()
        found = any(row[i : i + len(self.needle)] == self.needle for i in range(len(row)))
        answer = self.needle if found else []
        return torch.tensor([row + answer[:max_new_tokens]])


def test_evaluate_builds_exact_lengths_and_a_perfect_retriever_scores_100(tmp_path):
    haystack = "The grass is green. The sky is blue! Water is wet. " * 20
    needle = NEEDLES["en"]
    tok = CharTokenizer(
        haystack + needle.needle + needle.question + " Answer from the text above.\nsystemuserassistant"
        "You are a helpful assistant."
    )
    builder = PromptBuilder(tok, haystack, needle)
    model = EchoModel(tok, builder.needle)
    result = evaluate(model, tok, haystack, lengths=[400, 700], depths=[0.0, 50.0, 100.0], max_new_tokens=200)
    assert [c["prompt_tokens"] for c in result["cells"]] == [400] * 3 + [700] * 3
    assert result["average"] == 100.0 and result["scoring"].startswith("100 if")
    png = heatmap_png(result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "needle.png").write_bytes(png)
    with pytest.raises(ValueError, match="no room"):
        builder.build(builder.overhead, 50.0)


def test_heatmap_renders_a_partial_grid():
    result = {
        "lengths": [10, 20],
        "depths": [0.0, 100.0],
        "average": 50.0,
        "cells": [{"length": 10, "depth": 0.0, "score": 100.0}, {"length": 20, "depth": 100.0, "score": 0.0}],
    }
    assert heatmap_png(result)[:8] == b"\x89PNG\r\n\x1a\n"
