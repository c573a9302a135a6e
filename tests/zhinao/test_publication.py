"""Atomic publication on the real S3 server: a run is invisible until its manifest is written, a
reader between any two writes sees exactly one run, rank 0 publishes only once every rank has
finished, and generations beyond the one replaced are deleted."""

import json
import uuid

import pytest

from zhinao.artifacts import StageOutput
from zhinao.config.runtime import StageRuntime
from zhinao.publication import PublicationError, finish, generation_of, publish, staged, writing_store


@pytest.fixture
def root(s3_server, monkeypatch):
    for name, value in s3_server.env().items():  # what open_store reads in a replica
        monkeypatch.setenv(name, value)
    bucket = f"pub-{uuid.uuid4().hex[:8]}"
    yield s3_server.store(f"s3://{bucket}/runs/p/sft")
    s3_server.drop_bucket(bucket)


FILES = ("hf/config.json", "hf/model.safetensors", "report/sft.md", "summary.json")


def write_run(root, generation: str, tag: str, after_each=lambda: None) -> None:
    """A run writing its files one by one (the summary last, as every stage does)."""
    gen = root.child(f"_gen/{generation}")
    for key in FILES:
        gen.put_bytes(key, json.dumps({"run": tag}).encode())
        after_each()


def read_all(root) -> set[str]:
    """What one reader sees: the run tag of every file of the output it resolves."""
    out = StageOutput(root)
    return {json.loads(out.store.get_bytes(key))["run"] for key in FILES}


def test_a_reader_between_any_two_writes_sees_the_published_run_only(root):
    write_run(root, "aaaa", "old")
    assert not StageOutput(root).is_finished()  # written, not published
    publish(root, "aaaa", {"run": "old"})
    assert read_all(root) == {"old"}
    write_run(root, "bbbb", "new", after_each=lambda: assert_reads(root, {"old"}))
    publish(root, "bbbb", {"run": "new"})
    assert read_all(root) == {"new"} and StageOutput(root).is_finished()


def assert_reads(root, expected: set[str]) -> None:
    assert read_all(root) == expected


def test_the_replaced_generation_stays_one_publication_then_goes(root):
    root.put_bytes("summary.json", b"{}")  # a file an older, unpublished layout left at the prefix
    write_run(root, "aaaa", "a")
    write_run(root, "dead", "a run killed before it published")
    publish(root, "aaaa", {})
    assert not root.exists("summary.json") and generations(root) == {"aaaa"}
    write_run(root, "bbbb", "b")
    publish(root, "bbbb", {})
    assert generations(root) == {"aaaa", "bbbb"}  # readers that resolved aaaa just before still can
    write_run(root, "cccc", "c")
    publish(root, "cccc", {})
    assert generations(root) == {"bbbb", "cccc"}


def generations(root) -> set[str]:
    return {k.split("/")[1] for k in root.list("_gen/")}


def test_rank_0_publishes_only_once_every_rank_has_finished(root):
    fingerprint = {"kind": "sft", "params": {"lr": 1e-5}}
    rt = StageRuntime(pipeline="p", stage="sft", kind="sft", output=root.uri)
    run = staged(rt, fingerprint)
    assert run.runtime.output == root.child(f"_gen/{generation_of(fingerprint)}").uri and not run.published
    write_run(root, run.generation, "this")
    with pytest.raises(PublicationError, match=r"ranks \[1\] did not finish within 0s; nothing was published"):
        finish(root, run, rank=0, world_size=2, timeout=0, poll=0.01)
    assert not StageOutput(root).is_finished()
    finish(root, run, rank=1, world_size=2)
    finish(root, run, rank=0, world_size=2, timeout=5, poll=0.01)
    assert read_all(root) == {"this"} and staged(rt, fingerprint).published


def test_a_run_that_wrote_no_summary_is_not_published(root):
    root.child("_gen/aaaa").put_bytes("hf/config.json", b"{}")
    with pytest.raises(PublicationError, match="wrote no summary"):
        publish(root, "aaaa", {})
    assert not root.exists("_published.json")


def test_inputs_resolve_to_what_upstream_published_and_progress_to_what_is_written(root, s3_server):
    upstream = s3_server.store(root.uri.rsplit("/", 1)[0] + "/tok")
    write_run(upstream, "1111", "tok")
    publish(upstream, "1111", {})
    rt = StageRuntime(pipeline="p", stage="sft", kind="sft", inputs={"model": upstream.uri}, output=root.uri)
    assert staged(rt, {}).runtime.inputs == {"model": upstream.child("_gen/1111").uri}
    assert writing_store(root) is None
    root.put_bytes("_fingerprint.json", json.dumps({"kind": "sft"}).encode())
    assert writing_store(root).uri == root.child(f"_gen/{generation_of({'kind': 'sft'})}").uri
