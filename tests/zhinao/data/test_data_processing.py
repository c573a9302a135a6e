"""The data stage end to end: the same kept documents with 1 or 2 ranks (near-duplicates split
across shards included), and a stage run on the demo corpus that writes docs, rejects and the report."""

import json
import random
import threading
from pathlib import Path

import pytest

from zhinao.config.data import DataParams
from zhinao.config.runtime import StageRuntime
from zhinao.data.processing import build_steps, plan_passes, run_data_processing
from zhinao.distributed import DistEnv
from zhinao.stages import data as data_stage
from zhinao.storage import open_store

ARTICLE = [
    "The old harbour was rebuilt after the flood of 1953, when the sea wall gave way during a winter storm and the lower town was under water for two days.",
    "Engineers raised the new wall by three metres and added a set of gates that close automatically when the tide rises above a fixed mark.",
    "Today the harbour serves fishing boats and a small ferry, and the former warehouses along the quay have become shops, cafes and a maritime museum.",
]
BOILERPLATE = "This page is part of the town archive and may be copied freely for research and teaching purposes."
WORDS = (
    "river town market bridge school winter summer farmer teacher village harbour storm garden library church road "
    "museum mountain forest station festival bakery doctor student council mayor family century house field orchard "
    "mill tower square valley lake island ferry castle letter painting song"
).split()


def _page(i: int) -> str:
    """A distinct page (its own sentences, so no near-duplicates by accident) ending in the shared paragraph."""
    rng = random.Random(i)
    sentences = [
        f"The {rng.choice(WORDS)} near the {rng.choice(WORDS)} was {rng.choice(['built', 'opened', 'painted', 'moved', 'sold'])} "
        f"by the {rng.choice(WORDS)} in {1800 + rng.randrange(200)}, and the {rng.choice(WORDS)} of the {rng.choice(WORDS)} still remembers it."
        for _ in range(6)
    ]
    return "\n".join([" ".join(sentences[:3]), " ".join(sentences[3:]), BOILERPLATE])


def _write_corpus(root: Path) -> str:
    """Two files, so that with 2 ranks each reads one: the planted pairs straddle the shards."""
    near = "\n".join(ARTICLE) + "\nVisitors can walk along the wall at low tide and see the old gates."
    files = [
        [{"text": _page(i), "url": f"https://town.example/{i}"} for i in range(6)]
        + [{"text": near, "url": "https://town.example/near-a"}],
        [{"text": _page(i), "url": f"https://mirror.example/{i}"} for i in range(6, 10)]
        + [
            {
                "text": near.replace("low tide", "low water"),
                "url": "https://town.example/near-b",
            },  # near-duplicate across shards
            {"text": _page(2), "url": "https://other.example/copy"},  # exact duplicate across shards
            {
                "text": "Ein deutscher Satz über den Hafen und die alte Mauer der Stadt.",
                "url": "https://town.example/de",
            },
        ],
    ]
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for n, recs in enumerate(files):
        lines = [json.dumps(r) for r in recs] + (["{broken"] if n == 1 else [])
        (corpus / f"part-{n}.jsonl").write_text("\n".join(lines) + "\n")
    return f"file://{corpus}"


def _params(**kw) -> DataParams:
    return DataParams(mix={"enabled": False}, output={"barrierPollS": 0.02}, **kw)


def _run_ranks(params: DataParams, corpus: str, out: str, world: int) -> None:
    errors = []

    def rank(r):
        try:
            run_data_processing(
                params, corpus=open_store(corpus), output=open_store(out), dist=DistEnv(r, world, r), run_id="test"
            )
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors, errors


def _outputs(out: Path) -> tuple[list[str], list[tuple]]:
    docs = sorted(line for f in (out / "docs").glob("*.jsonl") for line in f.read_text().splitlines())
    rejects = sorted(
        (r["step"], r["reason"], r["file_index"], r["line"])
        for f in (out / "rejects").glob("*.jsonl")
        for r in map(json.loads, f.read_text().splitlines())
    )
    return docs, rejects


def test_each_near_duplicate_candidate_pair_is_confirmed_once_at_any_world_size(tmp_path):
    """On the demo corpus, candidate pairs of a near-duplicate cluster share keys of bands that two
    ranks own: each such pair reached its confirming rank twice, its shingle set was counted twice
    and its Jaccard overstated, so 2 ranks removed a document 1 rank kept."""
    from zhinao.data.demo_corpus import build_demo_corpus

    build_demo_corpus(f"file://{tmp_path}", n_docs=150)
    _run_ranks(_params(), f"file://{tmp_path}/corpus", f"file://{tmp_path}/one", 1)
    _run_ranks(_params(), f"file://{tmp_path}/corpus", f"file://{tmp_path}/two", 2)
    one, two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert any(step == "minhash" for step, *_ in one[1])
    assert one == two


@pytest.mark.parametrize("world", [2, 3])  # 3 ranks > 2 files: ranks stripe lines instead of files
def test_world_size_does_not_change_the_result(tmp_path, world):
    corpus = _write_corpus(tmp_path)
    _run_ranks(_params(), corpus, f"file://{tmp_path}/one", 1)
    _run_ranks(_params(), corpus, f"file://{tmp_path}/many", world)
    one, many = _outputs(tmp_path / "one"), _outputs(tmp_path / "many")
    assert one == many
    docs, rejects = one
    steps = {(s, r) for s, r, _, _ in rejects}
    assert ("minhash", "near_duplicate") in steps and ("exact_dedup", "duplicate_body") in steps
    assert ("input", "malformed_json") in steps and ("lang_id", "language:de") in steps
    assert {(f, ln) for s, _, f, ln in rejects if s == "minhash"} == {(1, 4)}  # the later copy goes
    # 10 copies of the boilerplate: the exact duplicate page goes (9), paragraph dedup deletes 30%
    # (6 left), then, being one long sentence too, sentence dedup keeps ceil(sqrt(6)) = 3.
    assert sum(BOILERPLATE in d for d in docs) == 3
    assert not list((tmp_path / "many").glob("_work/**/*.npy"))  # cleaned up


def test_passes_split_at_global_steps(tmp_path):
    from zhinao.data.dedup import StepContext
    from zhinao.data.exchange import Sharding

    steps = build_steps(DataParams(), StepContext(Sharding(1, 1), 0, tmp_path))
    passes = plan_passes(steps)
    assert [p.collect.names[0] if p.collect else None for p in passes] == [
        "url_dedup",
        "minhash",
        "paragraph_dedup",
        "sentence_dedup",
        "mix",
        None,
    ]
    assert [s.names[0] for s in passes[1].local] == ["lang_id", "rules", "junk", "pii"]


def test_stage_on_demo_corpus_writes_docs_rejects_and_report(tmp_path, demo_corpus):
    corpus, counts = demo_corpus
    out = tmp_path / "out"
    rt = StageRuntime(pipeline="p", stage="data", kind="data", inputs={"corpus": corpus}, output=f"file://{out}")
    data_stage.run(rt, data_stage.Params())

    docs = [json.loads(line) for f in sorted((out / "docs").glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert docs and all(d["text"] and d["source"] for d in docs)
    assert {d["source"] for d in docs} >= {"webpages", "code", "books"}
    rejects = [json.loads(line) for f in (out / "rejects").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert all({"step", "reason"} <= r.keys() and ("raw" in r or "doc" in r) for r in rejects)

    report = json.loads((out / "report" / "retention.json").read_text())
    assert (out / "report" / "retention.png").read_bytes()[:4] == b"\x89PNG"
    assert "| minhash |" in (out / "report" / "retention.md").read_text()
    rows = {r["step"]: r for r in report["steps"]}
    assert rows["input"]["docs_in"] == counts["lines"]  # every line accounted for
    assert rows["input"]["docs_removed"] == counts["bad_lines"]
    assert set(rows["input"]["reasons"]) == {"malformed_json", "invalid_utf8", "missing_text", "empty_text", "gigantic"}
    assert len(rejects) == sum(r["docs_removed"] for r in report["steps"] if r["step"] != "mix")
    # Every step removes something on the demo corpus: documents, or bytes for the steps that edit text.
    idle = [
        r["step"] for r in report["steps"] if r["step"] != "mix" and r["docs_removed"] <= 0 and r["bytes_removed"] <= 0
    ]
    assert idle == []
    planted = {(r["step"], r["doc"].get("planted")) for r in rejects if "doc" in r}
    for step, kind in [
        ("url_filter", "url_blacklist"),
        ("keywords", "keywords"),
        ("url_dedup", "url_dup"),
        ("exact_dedup", "exact_dup"),
        ("lang_id", "lang_id"),
        ("english_with_chinese", "english_with_chinese"),
        ("junk", "junk_page"),
        ("minhash", "near_dup"),
    ]:
        assert (step, kind) in planted
    assert report["mix"]["factors"]["webpages"] >= 1 and max(report["mix"]["factors"].values()) <= 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["docs_written"] == len(docs)
