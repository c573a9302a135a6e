"""Needle in a haystack: grid, needle placement, scoring like the reference, the key/value variant,
the streamed haystack, batched bf16 decoding, heat map."""

import random

import pytest
import torch

from zhinao.longctx.needle import (
    NEEDLES,
    Haystack,
    PromptBuilder,
    evaluate,
    grid,
    heatmap_png,
    insert_needle,
    kv_needle,
    levenshtein,
    needle_for,
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
    """Stands in for a model that retrieves perfectly: answers each row with the needle found in its
    prompt (any tokens between the marker ' The' ... '.' that holds `marker`). Records its calls."""

    def __init__(self, tokenizer, needle_ids_of):
        self.tokenizer, self.needle_ids_of = tokenizer, needle_ids_of
        self.param = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[int, int, bool, torch.dtype]] = []

    def parameters(self):
        yield self.param

    def generate(self, input_ids, max_new_tokens, **_):
        self.calls.append((*input_ids.shape, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        rows = []
        for row in input_ids.tolist():
            answer = next((n for n in self.needle_ids_of(row) if _contains(row, n)), [])
            rows.append(row + (answer + [0] * max_new_tokens)[:max_new_tokens])
        return torch.tensor(rows)


def _contains(row: list[int], part: list[int]) -> bool:
    return any(row[i : i + len(part)] == part for i in range(len(row)))


ALPHABET = (
    "The grass is green. The sky is blue! Water is wet.\n"
    + NEEDLES["en"].needle
    + NEEDLES["en"].question
    + " Answer from the text above.systemuserassistantYou are a helpful assistant."
    + "What special magic number is:0123456789?"
    + "".join(f"{k} " for k in ("Paris", "Lagos", "Lima", "Oslo", "Hanoi", "Quito", "Dakar", "Perth", "Kyoto"))
    + "".join(f"{k} " for k in ("Porto", "Cairo", "Seoul", "Accra", "Bern", "Riga", "Sofia", "Tunis", "Dhaka"))
    + "Havana Minsk"
)


def test_evaluate_builds_exact_lengths_and_a_perfect_retriever_scores_100(tmp_path):
    haystack = "The grass is green. The sky is blue! Water is wet. " * 20
    tok = CharTokenizer(ALPHABET)
    builder = PromptBuilder(tok, haystack)
    needle_ids = builder.parts(NEEDLES["en"])[0]
    model = EchoModel(tok, lambda row: [needle_ids])
    result = evaluate(model, tok, haystack, lengths=[400, 700], depths=[0.0, 50.0, 100.0], max_new_tokens=200)
    assert [c["prompt_tokens"] for c in result["cells"]] == [400] * 3 + [700] * 3
    assert result["average"] == 100.0 and result["scoring"].startswith("100 if")
    # one batch per length, decoded under bf16 autocast
    assert model.calls == [(3, 400, True, torch.bfloat16), (3, 700, True, torch.bfloat16)]
    png = heatmap_png(result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "needle.png").write_bytes(png)
    with pytest.raises(ValueError, match="no room"):
        builder.build(builder.overhead(NEEDLES["en"]), 50.0, NEEDLES["en"])


def test_cells_are_batched_batch_size_at_a_time_and_fp32_turns_autocast_off():
    tok = CharTokenizer(ALPHABET)
    model = EchoModel(tok, lambda row: [])
    result = evaluate(
        model, tok, "The sky is blue. ", lengths=[300], depths=[0, 25, 50, 75, 100], batch_size=2, precision="fp32"
    )
    assert [(c[0], c[2]) for c in model.calls] == [(2, False), (2, False), (1, False)]
    assert len(result["cells"]) == 5 and result["precision"] == "fp32"


def test_value_retrieval_needle_differs_per_cell_and_scores_on_the_value():
    a, b = (needle_for("kv", length=1000, depth=d, seed=7) for d in (0.0, 5.0))
    assert a != b and a == needle_for("kv", length=1000, depth=0.0, seed=7)
    assert needle_for("en", length=1000, depth=0.0, seed=7) is NEEDLES["en"]
    n = kv_needle(random.Random(1))
    value = n.expected
    assert n.needle.endswith(f"number is: {value}.") and value.isdigit() and len(value) == 7
    assert score_answer(f"The number is {value}.", n) == 100.0
    assert score_answer(value[:-1] + str((int(value[-1]) + 1) % 10), n) == pytest.approx(100 * 6 / 7)


def test_a_perfect_retriever_finds_every_key_value_needle():
    tok = CharTokenizer(ALPHABET)
    builder = PromptBuilder(tok, "The sky is blue. ")

    def values_in(row):  # the value of the needle sentence present in the prompt
        text = tok.decode(row)
        start = text.index("number is: ") + len("number is: ")
        return [tok(text[start : start + 7])["input_ids"]]

    result = evaluate(
        EchoModel(tok, values_in), tok, "The sky is blue. ", lengths=[300, 400], depths=[0, 50, 100], preset="kv"
    )
    assert result["average"] == 100.0 and len({c["expected"] for c in result["cells"]}) > 1
    assert builder.overhead(needle_for("kv", length=300, depth=0.0, seed=0)) < 300


def test_haystack_streams_documents_lazily_and_cycles_them():
    pulled = []

    def documents():
        for text in ("ab", "cd", "ef"):
            pulled.append(text)
            yield text

    hay = Haystack(documents, lambda text: list(text))
    assert hay.take(4) == list("ab\nc") and pulled == ["ab", "cd"]  # the third document is not read
    assert hay.take(11) == list("ab\ncd\nef\nab") and pulled == ["ab", "cd", "ef", "ab"]
    with pytest.raises(ValueError, match="empty"):
        Haystack(lambda: iter(()), list).take(1)


def test_heatmap_renders_a_partial_grid():
    result = {
        "lengths": [10, 20],
        "depths": [0.0, 100.0],
        "average": 50.0,
        "cells": [{"length": 10, "depth": 0.0, "score": 100.0}, {"length": 20, "depth": 100.0, "score": 0.0}],
    }
    assert heatmap_png(result)[:8] == b"\x89PNG\r\n\x1a\n"
