"""The chat format and its SFT labels, token for token against the reference masking rule."""

import pytest
from alignment_assets import tiny_tokenizer

from zhinao.chat import IGNORE_INDEX, ChatEncoder, as_messages, render, validate_sft_messages

X = IGNORE_INDEX


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_labels_match_the_reference_rule_piece_by_piece(tok):
    enc = ChatEncoder(tok)
    S, E = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    nl = ids(tok, "\n")
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "3+5="},
        {"role": "assistant", "content": "8"},
        {"role": "user", "content": "2+2="},
        {"role": "assistant", "content": "4"},
    ]
    got = enc.conversation(msgs)

    def masked_turn(role, content):
        body = ids(tok, role) + nl + ids(tok, content)
        return [S] + body + [E] + nl, [S] + [X] * len(body) + [E] + nl

    def trained_turn(content):
        head = ids(tok, "assistant") + nl
        return [S] + head + ids(tok, content) + [E] + nl, [S] + [X] * len(head) + ids(tok, content) + [E] + nl

    want_ids, want_labels = [], []
    for piece in (
        masked_turn("system", msgs[0]["content"]),
        masked_turn("user", "3+5="),
        trained_turn("8"),
        masked_turn("user", "2+2="),
        trained_turn("4"),
    ):
        want_ids += piece[0]
        want_labels += piece[1]
    assert got.input_ids == want_ids
    assert got.labels == want_labels
    # The ids decode to exactly the documented text format.
    assert tok.decode(got.input_ids) == render(msgs)
    assert tok.decode(got.input_ids) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n3+5=<|im_end|>\n<|im_start|>assistant\n8<|im_end|>\n"
        "<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    )
    # Trained text: the special tokens and newlines of every turn, plus the assistant answers.
    trained = [t for t in got.labels if t != X]
    assert tok.decode(trained) == (
        "<|im_start|><|im_end|>\n" * 2
        + "<|im_start|>8<|im_end|>\n"
        + "<|im_start|><|im_end|>\n"
        + "<|im_start|>4<|im_end|>\n"
    )


def test_prompt_is_a_prefix_and_completion_labels_only_the_response(tok):
    enc = ChatEncoder(tok)
    msgs = [{"role": "user", "content": "7+1="}]
    prompt = enc.prompt(msgs, system="You are a helpful assistant.")
    full = enc.conversation(msgs + [{"role": "assistant", "content": "8"}], system="You are a helpful assistant.")
    assert full.input_ids[: len(prompt)] == prompt
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    comp = enc.completion(msgs, "8", system="You are a helpful assistant.")
    assert comp.input_ids == full.input_ids
    assert tok.decode([t for t in comp.labels if t != X]) == "8<|im_end|>\n"
    assert comp.labels[: len(prompt)] == [X] * len(prompt)


def test_system_prompt_is_added_only_when_missing(tok):
    enc = ChatEncoder(tok)
    with_sys = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert enc.conversation(with_sys, system="Other").input_ids == enc.conversation(with_sys).input_ids
    assert tok.decode(enc.prompt([{"role": "user", "content": "hi"}], system="S")).startswith(
        "<|im_start|>system\nS<|im_end|>"
    )


def test_inputs_are_validated():
    assert as_messages("2+2=") == [{"role": "user", "content": "2+2="}]
    with pytest.raises(ValueError):
        as_messages([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="no assistant"):
        validate_sft_messages([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError):
        validate_sft_messages([])
