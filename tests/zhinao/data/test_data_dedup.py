"""Exact, paragraph and sentence dedup decisions (pure), and the steps on one rank."""

import math

import numpy as np
import pytest

from zhinao.config.data import ExactDedupConfig, ParagraphDedupConfig, SentenceDedupConfig
from zhinao.data.dedup import (
    KEY,
    POS,
    ExactDedup,
    ParagraphDedup,
    SentenceDedup,
    StepContext,
    group_choice,
    non_first,
    paragraph_deletions,
    sentence_deletions,
    sentence_units,
    url_key,
)
from zhinao.data.exchange import Comm, Sharding
from zhinao.data.io import Doc, make_gid


def test_non_first_keeps_the_smallest_gid():
    keys = np.array([(7, 30), (7, 10), (8, 5), (7, 20), (9, 1)], dtype=KEY)
    assert non_first(keys, "h").tolist() == [20, 30]


@pytest.mark.parametrize("n, deleted", [(1, 0), (2, 1), (3, 1), (4, 1), (5, 2), (10, 3), (20, 6)])
def test_paragraph_group_loses_30_percent_rounded_half_up(n, deleted):
    assert paragraph_deletions(np.array([n]), 0.3).tolist() == [deleted]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9, 10, 17, 100])
def test_sentence_unit_keeps_ceil_sqrt_n(n):
    assert n - sentence_deletions(np.array([n]))[0] == math.ceil(math.sqrt(n))


def test_group_choice_is_deterministic_and_per_group():
    recs = np.zeros(13, dtype=POS)
    recs["h"] = [1] * 10 + [2] * 3
    recs["gid"] = np.arange(13)[::-1]
    chosen = group_choice(recs, lambda sizes: paragraph_deletions(sizes, 0.3))
    assert sorted(chosen["h"].tolist()) == [1, 1, 1, 2]
    again = group_choice(recs[::-1].copy(), lambda sizes: paragraph_deletions(sizes, 0.3))
    assert sorted(chosen["gid"].tolist()) == sorted(again["gid"].tolist())  # input order does not matter


def test_sentence_units_16_token_guard():
    long = " ".join(["word"] * 20) + "."
    para = f"Short one. Another short one. {long} Tail."
    units = sentence_units(para, 16)
    assert [(para[s:e].strip(), ok) for _, s, e, ok in units] == [
        ("Short one. Another short one.", False),
        (long, True),
        ("Tail.", False),
    ]
    run = " ".join(f"Tiny sentence {i} here." for i in range(5))  # 5 x 4 tokens: a 20-token run
    assert [ok for *_, ok in sentence_units(run, 16)] == [True]
    zh = "这是一个足够长的中文句子，用来测试去重单元的长度是否达到要求。短句。"
    assert [ok for *_, ok in sentence_units(zh, 16)] == [True, False]


def test_url_key_normalises_scheme_case_and_slash():
    assert url_key("HTTPS://Example.com/a/") == url_key("http://example.com/a") != url_key("http://example.com/b")


def _run_global(step, docs):
    for d in docs:
        step.collect(d)
    step.sync(Comm(None, 0, 1))
    return [step.apply(d) for d in docs]


def _ctx(tmp_path):
    return StepContext(Sharding(1, 1), 0, tmp_path)


def test_exact_dedup_url_then_body(tmp_path):
    docs = [
        Doc(make_gid(0, 0), "A", "webpages", "http://x/1"),
        Doc(make_gid(0, 1), "B", "webpages", "http://x/1"),  # same URL
        Doc(make_gid(0, 2), "B", "webpages", "http://x/2"),  # same body as a URL loser: kept
        Doc(make_gid(0, 3), "A", "webpages", "http://x/3"),  # same body as doc 0
    ]
    drops = _run_global(ExactDedup(ExactDedupConfig(), _ctx(tmp_path)), docs)
    assert [d and d.step for d in drops] == [None, "url_dedup", None, "exact_dedup"]


def test_paragraph_dedup_deletes_30_percent_of_a_group(tmp_path):
    shared = "This paragraph is shared boilerplate that appears on many pages of the site."
    docs = [
        Doc(make_gid(0, i), f"Unique first paragraph number {i} of this page.\n{shared}", "webpages") for i in range(10)
    ]
    drops = _run_global(ParagraphDedup(ParagraphDedupConfig(), _ctx(tmp_path)), docs)
    assert drops == [None] * 10
    assert sum(shared in d.text for d in docs) == 7
    assert all(d.text.startswith("Unique first paragraph") for d in docs)


def test_sentence_dedup_keeps_ceil_sqrt_n_copies(tmp_path):
    sentence = "As with every function in this module, the behaviour described here applies to all supported platforms."
    docs = [Doc(make_gid(0, i), f"Page {i} talks about topic {i}. {sentence}", "webpages") for i in range(9)]
    drops = _run_global(SentenceDedup(SentenceDedupConfig(), _ctx(tmp_path)), docs)
    assert drops == [None] * 9
    assert sum(sentence in d.text for d in docs) == 3
    only = [Doc(make_gid(1, i), sentence, "webpages") for i in range(4)]
    drops = _run_global(SentenceDedup(SentenceDedupConfig(), _ctx(tmp_path)), only)
    assert sum(d is not None and d.reason == "all_sentences_duplicated" for d in drops) == 2
