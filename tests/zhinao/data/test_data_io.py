"""Bad input is counted and kept as a reject with its reason, never a crash, never silently dropped."""

import base64
import datetime
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zhinao.config.data import InputConfig
from zhinao.data.io import BadFile, Doc, Rejected, ShardWriter, make_gid, read_input, reject_record, split_gid
from zhinao.storage import open_store

CFG = InputConfig(max_doc_bytes=1000)

LINES = [
    (json.dumps({"text": "fine", "url": "http://a/", "id": 7}).encode(), None),
    (b'{"text": "unterminated', "malformed_json"),
    (b'{"text": "bad \xff\xfe bytes"}', "invalid_utf8"),
    (json.dumps({"body": "no text"}).encode(), "missing_text"),
    (json.dumps({"text": 5}).encode(), "text_not_string"),
    (json.dumps({"text": "  \n "}).encode(), "empty_text"),
    (json.dumps(["a", "list"]).encode(), "not_an_object"),
    (b'{"text": "lone \\ud800 surrogate"}', "invalid_unicode"),
    (json.dumps({"text": "x" * 1001}).encode(), "gigantic"),
    (json.dumps({"text": "y" * 10_000}).encode(), "gigantic"),  # longer than the line limit: never parsed
    (b"   ", "blank_line"),
]


@pytest.mark.parametrize("gz", [False, True])
def test_every_line_is_a_doc_or_a_reject(tmp_path, gz):
    path = tmp_path / ("in.jsonl.gz" if gz else "in.jsonl")
    data = b"\n".join(line for line, _ in LINES) + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    items = list(read_input(path, 3, CFG))
    assert len(items) == len(LINES)
    reasons = [i.reason if isinstance(i, Rejected) else None for i in items]
    assert reasons == [r for _, r in LINES]
    doc = items[0]
    assert isinstance(doc, Doc) and doc.url == "http://a/" and doc.fields == {"id": 7} and doc.source == "webpages"
    assert split_gid(doc.gid) == (3, 0) and split_gid(items[2].gid) == (3, 2)


# Lines orjson reads differently from (or refuses where) the standard module: the fields passed
# through must be exactly what json.loads gives.
STDLIB_ONLY = [
    b'{"text": "t", "big": 123456789012345678901234567890}',  # orjson: a float
    b'{"text": "t", "nested": [{"x": 1.5}, 2]}',
    b'{"text": "t", "score": NaN, "far": Infinity}',  # orjson refuses both
    b'{"text": "t", "tag": "lone \\udc00 in a field"}',
]


def test_fields_equal_the_standard_json_module(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(STDLIB_ONLY) + b"\n")
    docs = list(read_input(path, 0, CFG))
    assert all(isinstance(d, Doc) for d in docs)
    for doc, line in zip(docs, STDLIB_ONLY, strict=True):
        want = {k: v for k, v in json.loads(line).items() if k != "text"}
        assert json.dumps(doc.fields) == json.dumps(want)  # NaN != NaN: compare the serialised form
    assert type(docs[0].fields["big"]) is int


def test_nesting_orjson_takes_but_python_cannot_walk_is_no_crash(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "t", "deep": ' + b"[" * 1000 + b"]" * 1000 + b"}\n")
    (item,) = read_input(path, 0, CFG)
    assert isinstance(item, Doc) or item.reason == "malformed_json"


def test_reject_records_keep_the_raw_line(tmp_path):
    cfg = InputConfig(max_doc_bytes=1000, reject_raw_bytes=20)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "bad \xff bytes"}\n' + json.dumps({"text": "z" * 5000}).encode() + b"\n")
    bad, huge = read_input(path, 0, cfg)
    rec = reject_record("input", bad.reason, bad, cfg)
    assert rec["reason"] == "invalid_utf8" and "raw_b64" in rec and rec["line"] == 0
    rec = reject_record("input", huge.reason, huge, cfg)
    assert rec["truncated"] and rec["raw_bytes"] > 5000 and len(rec["raw"]) == 20
    doc = Doc(make_gid(2, 5), "text", "code", "http://u", {"id": 1})
    assert reject_record("rules", "too_short", doc, cfg) == {
        "step": "rules",
        "reason": "too_short",
        "file_index": 2,
        "line": 5,
        "doc": {"id": 1, "text": "text", "source": "code", "url": "http://u"},
    }


def test_shard_writer_rolls_files(tmp_path):
    store = open_store(f"file://{tmp_path}/out")
    with ShardWriter(store, "docs", rank=3, per_file=2) as w:
        for i in range(5):
            w.write({"i": i})
    assert store.list("docs/") == [f"docs/part-00003-0000{n}.jsonl" for n in range(3)]
    assert store.get_bytes("docs/part-00003-00002.jsonl") == b'{"i": 4}\n'


# --- Parquet -----------------------------------------------------------------------------------


def _bad_utf8_strings(values: list[bytes]):
    """A string array holding invalid UTF-8 (pyarrow validates nothing when built from buffers)."""
    raw = pa.array(values, type=pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())


def test_parquet_rows_map_like_jsonl_lines(tmp_path):
    path = tmp_path / "in.parquet"
    table = pa.table(
        {
            "text": ["fine", None, "", "  \n ", "x" * 1001, "second fine", "bad \xff"],
            "url": ["http://a/", None, None, None, None, None, None],
            "source": [None, None, None, None, None, "code", None],
            "id": [7, 8, 9, 10, 11, None, 13],
        }
    )
    table = table.set_column(
        0, "text", _bad_utf8_strings([b"fine", None, b"", b"  \n ", b"x" * 1001, b"second fine", b"bad \xff"])
    )
    pq.write_table(table, path, row_group_size=3)  # several row groups and batches
    items = list(read_input(path, 3, CFG))
    reasons = [i.reason if isinstance(i, Rejected) else None for i in items]
    assert reasons == [None, "missing_text", "empty_text", "empty_text", "gigantic", None, "invalid_utf8"]
    first, second = items[0], items[5]
    assert (
        first.text == "fine" and first.url == "http://a/" and first.source == "webpages" and first.fields == {"id": 7}
    )
    assert second.text == "second fine" and second.url is None and second.source == "code"
    assert second.fields == {}  # a null cell is a missing key, as in a JSONL line
    assert [split_gid(i.gid) for i in items] == [(3, n) for n in range(7)]

    recs = [reject_record("input", i.reason, i, CFG) for i in items if isinstance(i, Rejected)]
    assert [(r["reason"], r["line"], r["file_index"]) for r in recs] == [
        ("missing_text", 1, 3),
        ("empty_text", 2, 3),
        ("empty_text", 3, 3),
        ("gigantic", 4, 3),
        ("invalid_utf8", 6, 3),
    ]
    assert json.loads(recs[0]["raw"]) == {"text": None, "id": 8}  # the row, as a JSON line
    assert recs[3]["raw_bytes"] > 1001
    assert base64.b64decode(recs[4]["raw_b64"]) == b"bad \xff"


def test_parquet_non_string_text_is_rejected(tmp_path):
    # A Parquet column has one type: a file whose text column holds numbers (or bytes) rejects every row.
    for name, col in [("ints.parquet", pa.array([5, None])), ("bytes.parquet", pa.array([b"raw", b"x"]))]:
        pq.write_table(pa.table({"text": col}), tmp_path / name)
        reasons = [i.reason for i in read_input(tmp_path / name, 0, CFG)]
        assert reasons == (["text_not_string", "missing_text"] if name == "ints.parquet" else ["text_not_string"] * 2)


def test_parquet_passes_other_columns_through_as_json(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(
        pa.table(
            {
                "text": ["a page"],
                "day": [datetime.date(2024, 5, 1)],
                "tags": [["x", "y"]],
                "blob": [b"\x00\x01"],
            }
        ),
        path,
    )
    (doc,) = read_input(path, 0, CFG)
    assert doc.fields == {"day": "2024-05-01", "tags": ["x", "y"], "blob": "AAE="}
    assert Doc.from_spill(doc.to_spill()) == doc  # survives the spill files between passes


def test_parquet_keeps_only_owned_rows_and_bounds_batches(tmp_path, monkeypatch):
    from zhinao.data import io

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"doc {n} " + "w" * 500 for n in range(10)]}), path, row_group_size=4)
    monkeypatch.setattr(io, "PARQUET_BATCH_BYTES", 1500)  # ~500-byte rows: batches of about 3 rows
    sizes = []
    orig = pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        for b in orig(self, *a, **kw):
            sizes.append(b.num_rows)
            yield b

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    items = list(read_input(path, 1, CFG, owned=lambda row: row % 3 == 1))
    assert [split_gid(i.gid) for i in items] == [(1, 1), (1, 4), (1, 7)]
    assert [i.text.split()[1] for i in items] == ["1", "4", "7"]
    assert sizes and max(sizes) <= 3 and sum(sizes) == 10


def test_parquet_without_text_column_names_file_and_columns(tmp_path):
    path = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"body": ["x"], "url": ["http://a/"]}), path)
    (bad,) = read_input(path, 0, CFG)
    assert isinstance(bad, BadFile) and bad.reason == "no_text_column" and "['body', 'url']" in bad.detail
    cfg = InputConfig(text_field="body")
    (doc,) = read_input(path, 0, cfg)
    assert doc.text == "x" and doc.url == "http://a/"


def test_stage_reads_jsonl_and_parquet_side_by_side(tmp_path, demo_corpus):
    from zhinao.config.runtime import StageRuntime
    from zhinao.stages import data as data_stage

    demo = open_store(demo_corpus[0])
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_bytes(demo.get_bytes("part-00000.jsonl"))
    recs = [json.loads(line) for line in demo.get_bytes("part-00003.jsonl").splitlines()]
    recs += [{"text": None, "url": "http://bad/1"}, {"text": "", "url": "http://bad/2"}]
    cols = {k: [r.get(k) for r in recs] for k in ("text", "source", "url", "planted")}
    cols["container"] = ["parquet"] * len(recs)
    pq.write_table(pa.table(cols), corpus / "b.parquet", row_group_size=16)

    out = tmp_path / "out"
    rt = StageRuntime(
        pipeline="p", stage="data", kind="data", inputs={"corpus": f"file://{corpus}"}, output=f"file://{out}"
    )
    data_stage.run(rt, data_stage.Params(mix={"enabled": False}))

    docs = [json.loads(line) for f in sorted((out / "docs").glob("*.jsonl")) for line in f.read_text().splitlines()]
    from_parquet = [d for d in docs if d.get("container") == "parquet"]
    assert from_parquet and len(from_parquet) < len(docs)  # documents of both files are kept
    assert all(d["text"] and d["source"] and None not in d.values() for d in from_parquet)
    rejects = [json.loads(line) for f in (out / "rejects").glob("*.jsonl") for line in f.read_text().splitlines()]
    bad = sorted((r["reason"], r["line"]) for r in rejects if r["step"] == "input" and r["file_index"] == 1)
    assert bad == [("empty_text", len(recs) - 1), ("missing_text", len(recs) - 2)]
    rows = {r["step"]: r for r in json.loads((out / "report" / "retention.json").read_text())["steps"]}
    n_jsonl = len(demo.get_bytes("part-00000.jsonl").splitlines())
    assert rows["input"]["docs_in"] == n_jsonl + len(recs)  # every line and row accounted for


def _compress(kind: str, data: bytes) -> bytes:
    import bz2

    import zstandard

    return {"": lambda d: d, "gz": gzip.compress, "bz2": bz2.compress, "zst": zstandard.ZstdCompressor().compress}[
        kind
    ](data)


DOCS = b"".join(json.dumps({"text": f"document {i}"}).encode() + b"\n" for i in range(3000))


@pytest.mark.parametrize(
    "name",
    ["a.jsonl", "a.NDJSON", "a.json", "a.jsonl.gz", "a.JSONL.GZ", "a.ndjson.bz2", "a.jsonl.zst", "a.jsonl.ZSTD"],
)
def test_every_line_format_in_any_case(tmp_path, name):
    from zhinao.data.io import is_input

    kind = name.lower().rsplit(".", 1)[-1].replace("zstd", "zst")
    (tmp_path / name).write_bytes(_compress(kind if kind in ("gz", "bz2", "zst") else "", DOCS))
    assert is_input(name)
    items = list(read_input(tmp_path / name, 0, CFG))
    assert [d.text for d in items] == [f"document {i}" for i in range(3000)]


def test_zstd_of_several_frames_and_an_empty_file(tmp_path):
    (tmp_path / "multi.jsonl.zst").write_bytes(_compress("zst", DOCS[:1000]) + _compress("zst", DOCS[1000:]))
    assert len(list(read_input(tmp_path / "multi.jsonl.zst", 0, CFG))) == 3000
    (tmp_path / "empty.jsonl.zst").write_bytes(b"")
    assert list(read_input(tmp_path / "empty.jsonl.zst", 0, CFG)) == []


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("t.jsonl.gz", lambda: _compress("gz", DOCS)[: len(_compress("gz", DOCS)) // 2], "truncated"),
        ("t.jsonl.zst", lambda: _compress("zst", DOCS)[: len(_compress("zst", DOCS)) // 2], "truncated"),
        ("t.jsonl.bz2", lambda: _compress("bz2", DOCS)[:-50], "truncated"),
        ("t.jsonl.gz", lambda: DOCS, "not_gzip"),
        ("t.jsonl.zst", lambda: DOCS, "not_zstd"),
        ("t.jsonl.bz2", lambda: DOCS, "not_bz2"),
        ("t.parquet", lambda: b"PAR1 not really", "not_parquet"),
    ],
)
def test_a_damaged_file_ends_in_one_bad_file_record(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content())
    items = list(read_input(tmp_path / name, 4, CFG))
    bad = items[-1]
    assert isinstance(bad, BadFile) and (bad.file_idx, bad.reason) == (4, reason), bad
    assert not any(isinstance(i, BadFile) for i in items[:-1])
    docs = [i for i in items if isinstance(i, Doc)]
    assert bad.lines >= len(docs) and [d.text for d in docs] == [f"document {i}" for i in range(len(docs))]


def test_list_inputs_separates_unknown_files(tmp_path):
    from zhinao.data.io import list_inputs

    for name in ("b.jsonl", "A.PARQUET", "c.csv", "README.md", "_work/x.jsonl", "sub/d.ndjson.zst"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_inputs(open_store(f"file://{tmp_path}")) == (
        ["A.PARQUET", "b.jsonl", "sub/d.ndjson.zst"],
        ["README.md", "c.csv"],
    )
