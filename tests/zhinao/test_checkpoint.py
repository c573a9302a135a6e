"""zhinao.checkpoint: commit order, verified loading with fallback, pruning; both backends."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest

from zhinao.checkpoint import (
    CheckpointError,
    CheckpointManager,
    build_manifest,
    load_order,
    parse_manifest,
    parse_step_name,
    sha256_file,
    step_name,
    steps_to_prune,
)
from zhinao.storage import ObjectStore, StorageError, StoreRetry, open_store

FAST = StoreRetry(attempts=3, base_delay=0.01, max_delay=0.05, connect_timeout=1.0, read_timeout=10.0)


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        yield open_store(f"file://{tmp_path}/store", retry=FAST)
        return
    server = request.getfixturevalue("s3_server")
    store = server.store(retry=FAST)
    yield store
    server.drop_bucket(store.bucket)


def make_parts(d: Path, step: int, names=("model.pt", "optimizer.pt", "rng/rank0.pt")) -> dict[str, Path]:
    files = {}
    for name in names:
        p = d / f"out-{step}" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"{name} at step {step}".encode() * 50)
        files[name] = p
    return files


def save(mgr: CheckpointManager, tmp: Path, step: int, **meta) -> dict[str, str]:
    sums = mgr.upload_parts(step, make_parts(tmp, step))
    mgr.commit(step, sums, meta or {"step": step})
    return sums


class Recording(ObjectStore):
    """Delegates to a store and records every write, in order."""

    def __init__(self, inner: ObjectStore):
        self.inner, self.uri, self.writes = inner, inner.uri, []

    def put_bytes(self, key, data):
        self.writes.append(key)
        self.inner.put_bytes(key, data)

    def put_file(self, key, path):
        self.writes.append(key)
        self.inner.put_file(key, path)

    def get_bytes(self, key):
        return self.inner.get_bytes(key)

    def get_file(self, key, path):
        self.inner.get_file(key, path)

    def exists(self, key):
        return self.inner.exists(key)

    def sizes(self, prefix=""):
        return self.inner.sizes(prefix)

    def get_versioned(self, key):
        return self.inner.get_versioned(key)

    def put_if(self, key, data, *, version):
        self.writes.append(key)
        return self.inner.put_if(key, data, version=version)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def delete(self, key):
        self.writes.append(f"DELETE {key}")
        self.inner.delete(key)

    def delete_prefix(self, prefix):
        self.writes.append(f"DELETE {prefix}*")
        self.inner.delete_prefix(prefix)

    def child(self, prefix):
        return Recording(self.inner.child(prefix))


# -- pure helpers ------------------------------------------------------------------------------


def test_step_names_sort_like_numbers():
    assert step_name(10) == "step-00000010"
    assert step_name(123456789) == "step-123456789"
    assert parse_step_name("step-00000010") == 10 and parse_step_name("step-00000010\n") == 10
    for bad in ["step-10", "latest", "step-0000001x", ""]:
        assert parse_step_name(bad) is None
    with pytest.raises(ValueError):
        step_name(-1)
    assert sorted(step_name(s) for s in [100, 9, 20]) == [step_name(9), step_name(20), step_name(100)]


@pytest.mark.parametrize(
    ("committed", "keep", "protect", "expected"),
    [
        ([], 2, None, []),
        ([10], 2, 10, []),
        ([10, 20, 30], 2, 30, [10]),
        ([30, 10, 20, 40], 2, 40, [10, 20]),
        ([10, 20, 30], 1, 30, [10, 20]),
        # the just-committed step is kept even if newer ones exist (a resumed run re-saving)
        ([10, 20, 30], 1, 10, [20]),
        ([10, 20, 30], 5, None, []),
    ],
)
def test_steps_to_prune(committed, keep, protect, expected):
    assert steps_to_prune(committed, keep, protect) == expected


def test_load_order_is_newest_first_and_includes_the_pointer():
    assert load_order([10, 30, 20], 20) == [30, 20, 10]
    assert load_order([10], 40) == [40, 10]
    assert load_order([], None) == []


def test_manifest_round_trip_and_validation():
    sha = "ab" * 32
    created = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    doc = build_manifest(10, {"b.pt": sha, "a.pt": sha}, {"loss": 1.5}, created)
    assert doc == {
        "step": 10,
        "parts": {"a.pt": sha, "b.pt": sha},
        "meta": {"loss": 1.5},
        "created": "2025-01-02T03:04:05+00:00",
    }
    assert parse_manifest(json.dumps(doc).encode(), 10) == doc
    bad_cases = {
        b"{not json": "not valid JSON",
        b"[]": "not a JSON object",
        json.dumps({**doc, "step": 11}).encode(): "says step 11",
        json.dumps({**doc, "parts": {}}).encode(): "no parts",
        json.dumps({**doc, "parts": {"a.pt": "xyz"}}).encode(): "malformed",
        json.dumps({**doc, "parts": {"../evil": sha}}).encode(): "invalid",
    }
    for raw, why in bad_cases.items():
        with pytest.raises(CheckpointError, match=why):
            parse_manifest(raw, 10)


def test_sha256_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"hello")
    assert sha256_file(p) == hashlib.sha256(b"hello").hexdigest()


# -- the manager, on both backends -------------------------------------------------------------


def test_commit_writes_parts_then_manifest_then_latest(store, tmp_path):
    rec = Recording(store)
    mgr = CheckpointManager(rec)
    sums = mgr.upload_parts(10, make_parts(tmp_path, 10))
    assert sums == {n: sha256_file(p) for n, p in make_parts(tmp_path, 10).items()}
    assert not store.exists("checkpoints/latest")  # uploading alone commits nothing
    assert mgr.committed_steps() == [] and mgr.load_latest(tmp_path / "w") is None
    mgr.commit(10, sums, {"tokens": 1234})
    writes = [w for w in rec.writes if not w.startswith("DELETE")]
    assert writes[-2:] == ["checkpoints/step-00000010/manifest.json", "checkpoints/latest"]
    assert set(writes[:-2]) == {f"checkpoints/step-00000010/{n}" for n in sums}
    assert store.get_bytes("checkpoints/latest") == b"step-00000010"
    manifest = json.loads(store.get_bytes("checkpoints/step-00000010/manifest.json"))
    assert manifest["step"] == 10 and manifest["parts"] == sums and manifest["meta"] == {"tokens": 1234}
    assert datetime.fromisoformat(manifest["created"]).tzinfo is not None
    assert mgr.committed_steps() == [10]

    loaded = mgr.load_latest(tmp_path / "work")
    assert loaded is not None and loaded.step == 10 and loaded.meta == {"tokens": 1234}
    assert loaded.dir == tmp_path / "work" / "step-00000010"
    assert set(loaded.parts) == set(sums)
    for name, path in loaded.parts.items():
        assert path == loaded.dir / name and sha256_file(path) == sums[name]


def test_upload_failing_midway_is_never_committed(store, tmp_path, caplog):
    mgr = CheckpointManager(store)
    save(mgr, tmp_path, 10)
    files = make_parts(tmp_path, 20)

    class FailsOnOptimizer(Recording):
        def put_file(self, key, path):
            if key.endswith("optimizer.pt"):
                raise StorageError(f"cannot put object '{key}' after 6 attempts: connection refused")
            super().put_file(key, path)

    with pytest.raises(StorageError):  # the upload dies halfway: model.pt is up, the rest is not
        CheckpointManager(FailsOnOptimizer(store)).upload_parts(20, files)
    assert store.exists("checkpoints/step-00000020/model.pt")
    # rank 0 must not commit what is not all there
    present = {"model.pt": sha256_file(files["model.pt"]), "optimizer.pt": "0" * 64}
    with pytest.raises(CheckpointError, match=r"step-00000020: parts not in storage: optimizer.pt"):
        mgr.commit(20, present)
    assert store.get_bytes("checkpoints/latest") == b"step-00000010"
    assert not store.exists("checkpoints/step-00000020/manifest.json")
    assert mgr.committed_steps() == [10]
    with caplog.at_level(logging.WARNING):
        loaded = mgr.load_latest(tmp_path / "work")
    assert loaded is not None and loaded.step == 10
    assert not caplog.records  # an incomplete step dir is simply not a checkpoint
    # the next good commit cleans the leftovers of the failed one
    save(mgr, tmp_path, 30)
    assert not store.list("checkpoints/step-00000020/")


def test_load_falls_back_past_a_corrupted_part_and_keeps_it(store, tmp_path, caplog):
    mgr = CheckpointManager(store, keep=3)
    save(mgr, tmp_path, 10)
    save(mgr, tmp_path, 20)
    store.put_bytes("checkpoints/step-00000020/optimizer.pt", b"bit rot")
    with caplog.at_level(logging.WARNING, logger="zhinao.checkpoint"):
        loaded = mgr.load_latest(tmp_path / "work")
    assert loaded is not None and loaded.step == 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "step-00000020" in warnings[0] and "optimizer.pt" in warnings[0] and "corrupt" in warnings[0]
    assert store.url("checkpoints/step-00000020") in warnings[0]
    # skipped, not deleted; and the local copy of the bad one is gone
    assert store.get_bytes("checkpoints/step-00000020/optimizer.pt") == b"bit rot"
    assert mgr.committed_steps() == [10, 20]
    assert not (tmp_path / "work" / "step-00000020").exists()


def test_load_falls_back_past_missing_part_and_bad_manifest(store, tmp_path, caplog):
    mgr = CheckpointManager(store, keep=5)
    for s in (10, 20, 30):
        save(mgr, tmp_path, s)
    store.delete("checkpoints/step-00000030/model.pt")
    store.put_bytes("checkpoints/step-00000020/manifest.json", b"{truncated")
    with caplog.at_level(logging.WARNING, logger="zhinao.checkpoint"):
        loaded = mgr.load_latest(tmp_path / "work")
    assert loaded is not None and loaded.step == 10
    msgs = [r.getMessage() for r in caplog.records]
    assert any("step-00000030" in m and "'model.pt' is missing" in m for m in msgs)
    assert any("step-00000020" in m and "unreadable manifest" in m for m in msgs)
    # nothing valid at all -> None
    store.put_bytes("checkpoints/step-00000010/model.pt", b"x")
    assert mgr.load_latest(tmp_path / "work2") is None


def test_manifest_without_latest_update_still_counts(store, tmp_path, caplog):
    """Crash between manifest and pointer: the manifest means committed, so load the newer one."""
    mgr = CheckpointManager(store)
    save(mgr, tmp_path, 10)
    sums = mgr.upload_parts(20, make_parts(tmp_path, 20))
    store.put_bytes("checkpoints/step-00000020/manifest.json", json.dumps(build_manifest(20, sums)).encode())
    assert store.get_bytes("checkpoints/latest") == b"step-00000010"
    loaded = mgr.load_latest(tmp_path / "work")
    assert loaded is not None and loaded.step == 20
    # and a pointer to a step without a manifest is reported, then skipped
    store.put_bytes("checkpoints/latest", b"step-00000099")
    with caplog.at_level(logging.WARNING, logger="zhinao.checkpoint"):
        assert mgr.load_latest(tmp_path / "work").step == 20
    assert any("step-00000099" in r.getMessage() and "no manifest" in r.getMessage() for r in caplog.records)


def test_prune_keeps_the_newest(store, tmp_path):
    mgr = CheckpointManager(store, keep=2)
    for s in (1, 2, 3, 4):
        save(mgr, tmp_path, s)
        assert mgr.committed_steps() == [x for x in (s - 1, s) if x >= 1]
    assert sorted({k.split("/")[1] for k in store.list("checkpoints/step-")}) == ["step-00000003", "step-00000004"]
    assert store.get_bytes("checkpoints/latest") == b"step-00000004"
    # re-committing an older step (a resumed run) never prunes the one just committed
    save(mgr, tmp_path, 2)
    assert 2 in mgr.committed_steps() and store.get_bytes("checkpoints/latest") == b"step-00000002"


def test_select_downloads_only_some_parts(store, tmp_path):
    mgr = CheckpointManager(store)
    save(mgr, tmp_path, 5)
    loaded = mgr.load_latest(tmp_path / "w", select=lambda name: name.startswith("rng/"))
    assert loaded is not None and list(loaded.parts) == ["rng/rank0.pt"]
    assert sorted(p.name for p in loaded.dir.rglob("*") if p.is_file()) == ["rank0.pt"]


def test_custom_prefix_and_child_store(store, tmp_path):
    run = store.child("runs/exp1")
    mgr = CheckpointManager(run, prefix="ckpt", keep=1)
    save(mgr, tmp_path, 7)
    assert store.get_bytes("runs/exp1/ckpt/latest") == b"step-00000007"
    assert CheckpointManager(store.child("runs/exp1"), prefix="ckpt").load_latest(tmp_path / "w").step == 7
    assert CheckpointManager(store).load_latest(tmp_path / "w2") is None


def test_storage_outage_while_loading_is_an_error_not_a_fresh_start(tmp_path):
    from zhinao_k8s.runner.local import free_port

    dead = open_store(
        "s3://bucket/run", endpoint=f"http://127.0.0.1:{free_port()}", access_key="a", secret_key="b", retry=FAST
    )
    with pytest.raises(StorageError, match="connection refused"):
        CheckpointManager(dead).load_latest(tmp_path)


def test_s3_outage_during_upload_leaves_previous_checkpoint(fresh_s3_server, tmp_path):
    store = fresh_s3_server.store(retry=FAST)
    mgr = CheckpointManager(store)
    save(mgr, tmp_path, 10)
    fresh_s3_server.stop(grace=0)
    with pytest.raises(StorageError, match=r"cannot put object 'run/checkpoints/step-00000020/.*after 3 attempts"):
        mgr.upload_parts(20, make_parts(tmp_path, 20))
    fresh_s3_server.start()
    assert store.get_bytes("checkpoints/latest") == b"step-00000010"
    loaded = mgr.load_latest(tmp_path / "work")
    assert loaded is not None and loaded.step == 10
    # the run carries on and the next checkpoint commits normally
    save(mgr, tmp_path, 20)
    assert mgr.load_latest(tmp_path / "work").step == 20
