"""Bad input is counted and kept as a reject with its reason, never a crash, never silently dropped."""

import gzip
import json

import pytest

from zhinao.config.data import InputConfig
from zhinao.data.io import Doc, Rejected, ShardWriter, make_gid, read_input, reject_record, split_gid
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
        "step": "rules", "reason": "too_short", "file_index": 2, "line": 5,
        "doc": {"id": 1, "text": "text", "source": "code", "url": "http://u"},
    }


def test_shard_writer_rolls_files(tmp_path):
    store = open_store(f"file://{tmp_path}/out")
    with ShardWriter(store, "docs", rank=3, per_file=2) as w:
        for i in range(5):
            w.write({"i": i})
    assert store.list("docs/") == [f"docs/part-00003-0000{n}.jsonl" for n in range(3)]
    assert store.get_bytes("docs/part-00003-00002.jsonl") == b'{"i": 4}\n'
