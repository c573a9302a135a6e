"""SFT curation: source rating and dropping, labels, reweighting, dedup."""

from zhinao.data import sft_tools as T


def conv(user, answer, **fields):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **fields}


def test_rate_sample_and_drop_low_sources():
    records = [conv(f"q{i}", "a", source="forum", rating=2) for i in range(10)]
    records += [conv(f"p{i}", "a", source="books", rating=4.5) for i in range(5)] + [conv("x", "a", source="new")]
    sample = T.sample_for_rating(records, per_source=3, seed=1)
    assert {s: len(v) for s, v in sample.items()} == {"books": 3, "forum": 3, "new": 1}
    assert sample == T.sample_for_rating(records, per_source=3, seed=1)  # seeded
    ratings = T.source_ratings(records)
    assert ratings == {"forum": 2.0, "books": 4.5}
    kept, dropped = T.drop_low_sources(records, ratings, threshold=3)
    assert dropped == ["forum"] and len(kept) == 6  # unrated "new" is kept


def test_keyword_labels_and_existing_labels_win():
    recs = [
        conv("Solve 3 + 4 = ?", "7"),
        conv("Write a python function", "x" * 1500),
        conv("翻译这句话", "ok", category="translation-set"),
    ]
    labelled = T.label_records(recs, T.keyword_labeler)
    assert [(r["category"], r["difficulty"]) for r in labelled] == [
        ("math", "easy"),
        ("code", "hard"),
        ("translation-set", "easy"),
    ]
    assert T.label_records(recs[2:], T.keyword_labeler, overwrite=True)[0]["category"] == "translation"


def test_reweight_repeats_prunes_and_samples_fractions():
    recs = [conv(str(i), "a", category="math" if i % 2 else "chat", difficulty="hard") for i in range(1000)]
    out = T.reweight(recs, {"category:math": 2.0, "category:chat": 0.0, "difficulty:hard": 0.75}, seed=3)
    # math: weight 2 * 0.75 = 1.5 -> each once plus once more with p 0.5; chat pruned.
    assert all(r["category"] == "math" for r in out)
    assert 700 <= len(out) <= 800
    assert T.record_weight(conv("x", "y"), {"category:math": 3}) == 1.0


def test_dedup_normalises_case_and_whitespace():
    recs = [conv("Hello  World", "Hi"), conv("hello world", "hi "), conv("hello world", "bye")]
    kept, dropped = T.dedup(recs)
    assert dropped == 1 and [r["messages"][1]["content"] for r in kept] == ["Hi", "bye"]
