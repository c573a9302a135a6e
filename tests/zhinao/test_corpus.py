"""zhinao.corpus: the one JSONL line reader and the document reader on top of it."""

import gzip
import json

from zhinao.corpus import corpus_keys, jsonl_lines, read_documents
from zhinao.storage import FileStore


def test_lines_of_plain_and_gzipped_files_with_their_numbers_blank_lines_skipped(tmp_path):
    store = FileStore(tmp_path)
    store.put_bytes("a.jsonl", b'{"text": "one"}\n\n{"text": "two"}\n')
    store.put_bytes("b.jsonl.gz", gzip.compress(b'{"text": "three"}\r\n   \n'))
    assert list(jsonl_lines(store, ["a.jsonl", "b.jsonl.gz"])) == [
        ("a.jsonl", 1, b'{"text": "one"}'),
        ("a.jsonl", 3, b'{"text": "two"}'),
        ("b.jsonl.gz", 1, b'{"text": "three"}'),
    ]


def test_documents_of_a_data_stage_output_skip_unreadable_lines(tmp_path, caplog):
    store = FileStore(tmp_path)
    rows = [{"text": "kept", "source": "web"}, {"text": ""}, {"no_text": 1}, {"text": "also", "source": None}]
    store.put_bytes("docs/part-0.jsonl", ("\n".join(json.dumps(r) for r in rows) + "\nnot json\n").encode())
    store.put_bytes("rejects/part-0.jsonl", b'{"text": "rejected"}\n')
    assert corpus_keys(store) == ["docs/part-0.jsonl"]
    docs = list(read_documents(store))
    assert [(d.text, d.source) for d in docs] == [("kept", "web"), ("also", "default")]
    assert "skipped 2 unreadable lines" in caplog.text
