"""The demo corpus: deterministic per seed, four files, every planted kind present."""

from zhinao.data.demo_corpus import build_demo_corpus
from zhinao.storage import open_store


def test_demo_corpus_is_deterministic_and_planted(tmp_path):
    a = build_demo_corpus(f"file://{tmp_path}/a", n_docs=60, seed=3)
    b = build_demo_corpus(f"file://{tmp_path}/b", n_docs=60, seed=3)
    assert a == b
    sa, sb = open_store(f"file://{tmp_path}/a"), open_store(f"file://{tmp_path}/b")
    assert sa.list() == [f"corpus/part-{i:05d}.jsonl" for i in range(4)]
    assert all(sa.get_bytes(k) == sb.get_bytes(k) for k in sa.list())
    for kind in (
        "url_blacklist",
        "keywords",
        "url_dup",
        "exact_dup",
        "lang_id",
        "english_with_chinese",
        "junk_page",
        "near_dup",
        "repeated_paragraph",
        "repeated_sentence",
        "pii",
        "exam",
        "rule_punct",
    ):
        assert a.get(kind, 0) >= 1, kind
    assert a["bad_lines"] == 6 and a["lines"] == a["real"] + sum(
        v for k, v in a.items() if k not in ("real", "lines", "files", "repeated_paragraph", "repeated_sentence")
    )
