"""The BPE tokenizer: digits one by one, the released special tokens, lossless round trips."""

import pytest

from zhinao.tokenizer import EOD, IM_END, IM_START, PAD, load, to_transformers, train_bpe

TEXTS = ["The year 2024 had 366 days.", "def add(a, b):\n    return a + b", "数据清洗与去重 1234", "hello world"] * 50


@pytest.fixture(scope="module")
def tok():
    return to_transformers(train_bpe(TEXTS, vocab_size=600, min_frequency=2))


def test_digits_are_split_one_by_one(tok):
    pieces = tok.tokenize("in 2024")
    assert [p for p in pieces if p.strip("Ġ").isdigit()] == ["2", "0", "2", "4"]


def test_special_tokens_are_single_ids_and_configured(tok):
    for special in (PAD, EOD, IM_START, IM_END):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token == EOD and tok.pad_token == PAD and tok.padding_side == "left"


@pytest.mark.parametrize("text", ["Unseen words: zebra quokka!", "混合 English 与中文 42", "  indented\n\tcode"])
def test_round_trip_is_lossless_even_for_unseen_text(tok, text):
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_save_and_load_in_transformers_format(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = load(tmp_path)
    assert again("hello 2024")["input_ids"] == tok("hello 2024")["input_ids"]
