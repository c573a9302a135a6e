"""The ablation's evaluation pieces: held-out topic split, likelihood and generative scoring, task loading.

Likelihoods are checked with a bigram language model whose logits are a fixed table indexed by the
current token: every log-probability it assigns can be computed by hand from the table, so an
off-by-one in the continuation positions, or padding that leaks into a score, changes a number.
"""

import json
from types import SimpleNamespace

import pytest
import torch

from zhinao.ablation.evaluate import (
    Item,
    best_choice,
    evaluate_tasks,
    gen_scores,
    greedy,
    load_tasks,
    loglikelihoods,
    mc_generated_correct,
    normalize,
    parse_item,
)
from zhinao.ablation.prepare import is_held_out, topic_of
from zhinao.tokenizer import EOD, to_transformers, train_bpe

# ---- held-out topic split ----------------------------------------------------------------------


def test_a_url_topic_is_its_host_and_parent_path_so_pages_of_one_module_share_it():
    assert topic_of({"url": "https://docs.example/lib/json/0", "text": "a"}) == "docs.example/lib/json"
    assert topic_of({"url": "https://docs.example/lib/json/7/", "text": "b"}) == "docs.example/lib/json"
    assert topic_of({"url": "https://docs.example/lib/csv/0", "text": "a"}) == "docs.example/lib/csv"
    assert topic_of({"source": "books", "text": "a"}, "source") == "books"  # a plain field is the topic itself
    # without the field a document is its own topic: equal texts share it, different texts do not
    assert topic_of({"text": "same"}) == topic_of({"text": "same"}) != topic_of({"text": "other"})


def split_by_topic(records: list[dict], *, share: float, field: str, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, valid) as zhinao.ablation.prepare.Split streams them."""
    held = [is_held_out(topic_of(r, field), share, seed) for r in records]
    return [r for r, h in zip(records, held) if not h], [r for r, h in zip(records, held) if h]


def test_no_topic_is_both_in_train_and_in_valid_and_the_split_is_seeded():
    records = [
        {"text": f"page {i} of module {m}", "url": f"https://docs.example/m{m}/{i}"}
        for m in range(200)
        for i in range(5)
    ]
    train, valid = split_by_topic(records, share=0.2, field="url", seed=3)
    train_topics = {topic_of(r) for r in train}
    valid_topics = {topic_of(r) for r in valid}
    assert train_topics.isdisjoint(valid_topics)
    assert len(train) + len(valid) == len(records)
    assert 20 <= len(valid_topics) <= 60  # about 20% of the 200 topics
    assert all(len([r for r in valid if topic_of(r) == t]) == 5 for t in valid_topics)  # whole topics
    again, _ = split_by_topic(records, share=0.2, field="url", seed=3)
    other, _ = split_by_topic(records, share=0.2, field="url", seed=4)
    assert again == train and other != train
    # a larger share holds out a superset of topics (the same hash, a higher threshold)
    _, more = split_by_topic(records, share=0.4, field="url", seed=3)
    assert valid_topics < {topic_of(r) for r in more}
    assert is_held_out("t", 0.999999, 0) and not is_held_out("t", 1e-9, 0)


# ---- a bigram model with hand-computable likelihoods ---------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    words = "Paris Rome Berlin capital France answer option right the of is A B".split()
    texts = [" ".join(words)] * 20 + [
        "Question: The capital of France is\nAnswer: A. Paris\nB. Rome\nOptions:\nThe right option is B"
    ] * 20
    tok = to_transformers(train_bpe(texts, vocab_size=400))
    for word in (" Paris", " Rome", " A", " B", " is"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word  # the tables below rely on it
    return tok


class Bigram(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next token depends on the current one only."""

    device = torch.device("cpu")  # as a transformers model: the evaluation puts its inputs there

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.table[input_ids])


def tid(tok, text: str) -> int:
    (i,) = tok(text, add_special_tokens=False)["input_ids"]
    return i


def by_hand(table: torch.Tensor, tok, ctx: str, cont: str) -> float:
    c = tok(ctx, add_special_tokens=False)["input_ids"]
    x = tok(cont, add_special_tokens=False)["input_ids"]
    seq = c + x
    logp = torch.log_softmax(table.double(), dim=-1)
    return sum(float(logp[seq[len(c) - 1 + i], x[i]]) for i in range(len(x)))


def test_loglikelihoods_sum_the_continuation_tokens_only_and_ignore_padding(tokenizer):
    v = len(tokenizer)
    table = torch.randn(v, v, generator=torch.Generator().manual_seed(0)) * 3
    model = Bigram(table)
    pairs = [
        ("The capital of France is", " Paris"),
        ("Question: The capital of France is\nAnswer:", " the right option"),
        ("is", " Rome"),
        ("The capital of France is", " Rome Berlin Paris"),
    ]
    together = loglikelihoods(model, tokenizer, pairs, batch=4)  # padded to the longest pair
    one_by_one = [loglikelihoods(model, tokenizer, [p], batch=1)[0] for p in pairs]
    for (ctx, cont), (score, n), (alone, n_alone) in zip(pairs, together, one_by_one):
        assert n == n_alone == len(tokenizer(cont, add_special_tokens=False)["input_ids"])
        assert score == pytest.approx(by_hand(table, tokenizer, ctx, cont), abs=1e-4)
        assert score == pytest.approx(alone, abs=1e-5)
    # an empty context is scored after a document start (<eod>), not after the last padding position
    eod = tokenizer.convert_tokens_to_ids(EOD)
    ((score, _),) = loglikelihoods(model, tokenizer, [("", " Paris")])
    assert score == pytest.approx(float(torch.log_softmax(table[eod].double(), -1)[tid(tokenizer, " Paris")]), abs=1e-5)


def test_best_choice_by_sum_and_per_token():
    # option 0: 2 tokens at -1 each (sum -2, -1 per token); option 1: 1 token at -1.5
    scores = [(-2.0, 2), (-1.5, 1)]
    assert best_choice(scores) == 1
    assert best_choice(scores, per_token=True) == 0
    assert best_choice([(-1.0, 1), (-1.0, 1)]) == 0  # ties go to the first option


def capital_model(tokenizer, *, content: float, letter: float) -> Bigram:
    """After ':' (end of the qa prompt) and ' is' (end of the question), ' Paris' gets logit `content`
    and the letter ' A' gets `letter`; after ' Paris' the document ends."""
    v = len(tokenizer)
    table = torch.zeros(v, v)
    for end in (":", " is"):
        table[tid(tokenizer, end), tid(tokenizer, " Paris")] = content
        table[tid(tokenizer, end), tid(tokenizer, " A")] = letter
    table[tid(tokenizer, " Paris"), tokenizer.convert_tokens_to_ids(EOD)] = 20.0
    return Bigram(table)


def test_mc_scoring_picks_the_option_the_model_finds_likelier_under_every_rule(tokenizer):
    model = capital_model(tokenizer, content=8.0, letter=6.0)
    items = [
        Item("capitals", "mc", "The capital of France is", ["Paris", "Rome"], 0),
        Item("capitals", "mc", "The capital of France is", ["Rome", "Paris"], 1),
    ]
    res = evaluate_tasks(model, tokenizer, items, max_new_tokens=3)["capitals"]
    assert res["type"] == "mc" and res["items"] == 2
    assert set(res["templates"]) == {"qa", "choose", "cloze"}
    assert "letter" not in res["templates"]["cloze"]  # no options shown: content scoring only
    for template in res["templates"].values():
        assert template["content"] == template["content_norm"] == 1.0  # ' Paris' is likelier in both orders
    # the model always prefers the letter A: right for the first item, wrong for the second
    assert res["templates"]["qa"]["letter"] == res["templates"]["choose"]["letter"] == 0.5
    # greedy generation says ' Paris' (logit 8 > 6): no letter, the right option's text, no other's
    assert res["templates"]["qa"]["generated"] == 1.0
    assert res["scores"]["letter"] == 0.5 and res["scores"]["content"] == 1.0

    wrong = evaluate_tasks(
        model, tokenizer, [Item("capitals", "mc", "The capital of France is", ["Rome", "Berlin"], 0)], max_new_tokens=3
    )["capitals"]
    assert wrong["scores"]["letter"] == 1.0  # A is right here
    assert wrong["templates"]["qa"]["generated"] == 0.0  # ' Paris' names neither option


def test_generative_items_are_scored_exact_and_contains(tokenizer):
    model = capital_model(tokenizer, content=8.0, letter=0.0)
    assert greedy(model, tokenizer, ["The capital of France is", "Answer:"], max_new_tokens=4) == [" Paris", " Paris"]
    items = [
        Item("cities", "gen", "The capital of France is", answers=["Paris"]),
        Item("cities", "gen", "The capital of France is", answers=["Rome", "paris."]),  # case and punctuation aside
        Item("cities", "gen", "The capital of France is", answers=["Par"]),  # contained, not exact
        Item("cities", "gen", "The capital of France is", answers=["Berlin"]),
    ]
    res = evaluate_tasks(model, tokenizer, items, max_new_tokens=4)["cities"]
    assert set(res["templates"]) == {"qa", "cloze"}
    for template in res["templates"].values():
        assert template == {"exact": 0.5, "contains": 0.75}


def test_a_task_mixing_mc_and_gen_items_is_rejected(tokenizer):
    model = capital_model(tokenizer, content=1.0, letter=1.0)
    items = [Item("t", "mc", "q", ["a", "b"], 0), Item("t", "gen", "q", answers=["a"])]
    with pytest.raises(ValueError, match="mixes mc and gen"):
        evaluate_tasks(model, tokenizer, items)


# ---- string rules ------------------------------------------------------------------------------


def test_exact_and_contains_compare_normalised_text():
    assert normalize("  The  Answer, is: 42!\n") == "the answer is 42"
    assert gen_scores(" Paris.\nand more", ["paris"]) == (True, True)  # the first line is the answer
    assert gen_scores(" It is Paris", ["Paris"]) == (False, True)
    assert gen_scores(" Rome", ["Paris"]) == (False, False)
    assert gen_scores("", ["Paris"]) == (False, False)


def test_generated_mc_answers_by_letter_or_by_the_options_text():
    item = Item("t", "mc", "q", ["red wine", "white wine", "beer"], 1)
    assert mc_generated_correct(" B. white wine", item)
    assert mc_generated_correct("(B)", item)
    assert not mc_generated_correct(" A", item)
    assert not mc_generated_correct(" D", item)  # a letter beyond the options names none of them
    assert mc_generated_correct(" I'd say white wine", item)  # text: right when only the right option occurs
    assert not mc_generated_correct(" red wine or white wine", item)
    assert not mc_generated_correct(" Beeswax", item)  # 'B' followed by letters is a word, not the letter


# ---- task files ----------------------------------------------------------------------------------


def test_task_files_load_mc_and_gen_items(tmp_path):
    good = [
        {
            "task": "capitals",
            "type": "mc",
            "question": "The capital of France is",
            "choices": ["Paris", "Rome"],
            "answer": 0,
        },
        {"task": "sums", "type": "gen", "question": "2 + 2 =", "answers": ["4", "four"]},
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(good[0]) + "\n\n" + json.dumps(good[1]) + "\n")
    items = load_tasks(f"file://{path}")
    assert items == [
        Item("capitals", "mc", "The capital of France is", ["Paris", "Rome"], 0),
        Item("sums", "gen", "2 + 2 =", answers=["4", "four"]),
    ]
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.jsonl").write_text(json.dumps(good[1]) + "\n")
    (tmp_path / "dir" / "notes.txt").write_text("not a task file")
    assert load_tasks(f"file://{tmp_path / 'dir'}") == [items[1]]


MC = {"task": "t", "type": "mc", "question": "q", "choices": ["a", "b"], "answer": 1}
GEN = {"task": "t", "type": "gen", "question": "q", "answers": ["a"]}


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "an item is a JSON object, not list"),
        (json.dumps({**MC, "type": "open"}), "type must be 'mc' or 'gen', not 'open'"),
        (json.dumps({k: v for k, v in MC.items() if k != "question"}), "missing field 'question'"),
        (json.dumps({k: v for k, v in MC.items() if k != "answer"}), "missing field 'answer'"),
        (json.dumps({**MC, "choices": ["only one"], "answer": 0}), "needs 2-10 choices"),
        (json.dumps({**MC, "choices": [str(i) for i in range(11)], "answer": 0}), "needs 2-10 choices"),
        (json.dumps({**MC, "answer": 2}), "0 <= answer < len(choices)"),
        (json.dumps({**MC, "answer": -1}), "0 <= answer < len(choices)"),
        (json.dumps({**MC, "answer": "1"}), "answer must be the 0-based index"),
        (json.dumps({**MC, "answer": True}), "answer must be the 0-based index"),
        (json.dumps({**MC, "choices": "ab"}), "choices must be a list of strings"),
        (json.dumps({**GEN, "answers": []}), "answers is empty"),
        (json.dumps({**GEN, "answers": "4"}), "answers must be a list of strings"),
        (json.dumps({**GEN, "question": 7}), "question must be a string"),
    ],
)
def test_a_bad_task_line_is_reported_with_its_file_line_and_reason(tmp_path, line, reason):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(MC) + "\n" + line + "\n")
    with pytest.raises(ValueError) as exc:
        load_tasks(f"file://{path}")
    assert str(exc.value).startswith(f"{path}:2: ")
    assert reason in str(exc.value)


def test_an_empty_task_source_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="no task item"):
        load_tasks(f"file://{path}")
    with pytest.raises(ValueError, match="bad task item: missing field 'task'"):
        parse_item({"type": "gen", "question": "q", "answers": ["a"]})
