"""zhinao.storage against a local directory and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
import urllib3.exceptions
from servers.seaweedfs import SeaweedS3

from zhinao.storage import (
    FileStore,
    ObjectNotFound,
    S3Store,
    StorageError,
    StoreRetry,
    describe,
    is_transient,
    open_store,
)
from zhinao_k8s.runner.local import free_port

FAST = StoreRetry(attempts=3, base_delay=0.01, max_delay=0.05, connect_timeout=1.0, read_timeout=10.0)
MiB = 1 << 20


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        yield open_store(f"file://{tmp_path}/root", retry=FAST)
        return
    server = request.getfixturevalue("s3_server")
    store = server.store(retry=FAST)
    yield store
    server.drop_bucket(store.bucket)


def _no_temp_files(d: Path) -> bool:
    return not [p for p in d.rglob("*") if ".zhinao-tmp-" in p.name]


# -- behaviour both backends share -------------------------------------------------------------


def test_bytes_round_trip_and_overwrite(store):
    store.put_bytes("a.bin", b"\x00\x01binary\xff")
    store.put_bytes("empty", b"")
    assert store.get_bytes("a.bin") == b"\x00\x01binary\xff"
    assert store.get_bytes("empty") == b""
    store.put_bytes("a.bin", b"v2")
    assert store.get_bytes("a.bin") == b"v2"
    assert store.exists("a.bin") and not store.exists("nope")


def test_list_is_relative_recursive_sorted_and_prefix_filtered(store):
    for key in ["z", "a/2", "a/1", "a/b/c/deep", "ab"]:
        store.put_bytes(key, key.encode())
    assert store.list() == ["a/1", "a/2", "a/b/c/deep", "ab", "z"]
    assert store.list("a/") == ["a/1", "a/2", "a/b/c/deep"]
    assert store.list("a") == ["a/1", "a/2", "a/b/c/deep", "ab"]  # a plain string prefix, like S3
    assert store.list("a/b/") == ["a/b/c/deep"]
    assert store.list("missing/") == []
    # a directory is not an object
    assert not store.exists("a") and not store.exists("a/b")


def test_child_store_and_urls(store):
    child = store.child("runs/x")
    child.put_bytes("ckpt/model.pt", b"m")
    assert child.list() == ["ckpt/model.pt"]
    assert store.list() == ["runs/x/ckpt/model.pt"]
    assert child.uri == store.uri + "/runs/x"
    assert child.url("ckpt/model.pt") == store.url("runs/x/ckpt/model.pt") == store.uri + "/runs/x/ckpt/model.pt"
    assert child.url() == child.uri
    # the child reads what the parent wrote and vice versa
    assert store.child("runs").child("x").get_bytes("ckpt/model.pt") == b"m"


def test_delete_and_delete_prefix(store):
    for key in ["keep", "d/1", "d/sub/2", "dx"]:
        store.put_bytes(key, b"x")
    store.delete("keep")
    store.delete("keep")  # idempotent
    assert store.list() == ["d/1", "d/sub/2", "dx"]
    store.delete_prefix("d/")
    assert store.list() == ["dx"]
    store.delete_prefix("nothing/")
    if isinstance(store, FileStore):  # no empty directories left behind
        assert sorted(p.name for p in store.root.iterdir()) == ["dx"]


def test_big_file_round_trip(store, tmp_path):
    src = tmp_path / "big.bin"
    data = os.urandom(6 * MiB + 123)  # > 5 MiB: a multipart upload on S3
    src.write_bytes(data)
    store.put_file("ckpt/big.bin", src)
    dest = tmp_path / "out" / "nested" / "big.bin"
    store.get_file("ckpt/big.bin", dest)
    assert dest.read_bytes() == data
    assert _no_temp_files(tmp_path)
    if isinstance(store, S3Store):
        etag = store.client.stat_object(store.bucket, f"{store.prefix}/ckpt/big.bin").etag
        assert etag.endswith("-2"), f"expected a 2-part multipart upload, got ETag {etag}"


def test_missing_object(store, tmp_path):
    store.put_bytes("other", b"x")  # the bucket exists; the object does not
    dest = tmp_path / "dest.bin"
    dest.write_bytes(b"old")
    with pytest.raises(ObjectNotFound, match=r"cannot get object '.*nope'.*no such object"):
        store.get_bytes("nope")
    with pytest.raises(ObjectNotFound):
        store.get_file("nope", dest)
    assert dest.read_bytes() == b"old"  # untouched
    assert _no_temp_files(tmp_path)


def test_missing_bucket_reads_as_empty_and_first_write_creates_it(s3_server):
    store = s3_server.store(retry=FAST)
    assert store.list() == [] and not store.exists("k")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("k")
    store.put_bytes("k", b"v")
    assert s3_server.client().bucket_exists(store.bucket)
    assert store.get_bytes("k") == b"v"


def test_put_file_of_missing_local_file(store, tmp_path):
    with pytest.raises(StorageError, match="cannot put object"):
        store.put_file("k", tmp_path / "does-not-exist")


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/./b", "a/../b"])
def test_invalid_keys_are_rejected(store, key):
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


# -- atomicity ---------------------------------------------------------------------------------


def test_file_store_never_exposes_half_written_objects(tmp_path, monkeypatch):
    store = open_store(f"file://{tmp_path}/root")
    store.put_bytes("obj", b"old")
    src = tmp_path / "src"
    src.write_bytes(b"n" * (3 * MiB))

    import shutil as _shutil

    def broken_copy(fsrc, fdst, length=0):
        fdst.write(fsrc.read(MiB))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_shutil, "copyfileobj", broken_copy)
    with pytest.raises(StorageError, match=r"local path .*root: cannot put object 'obj': .*No space left"):
        store.put_file("obj", src)
    assert store.get_bytes("obj") == b"old"
    assert store.list() == ["obj"] and _no_temp_files(tmp_path)


def test_s3_get_file_broken_mid_stream_keeps_old_file(s3_server, tmp_path, monkeypatch):
    store = s3_server.store(retry=FAST)
    store.put_bytes("obj", b"new" * 1000)
    dest = tmp_path / "dest"
    dest.write_bytes(b"old")
    real_get = store.client.get_object

    def flaky_get(*args, **kwargs):
        resp = real_get(*args, **kwargs)

        class Broken:
            def stream(self, amt):
                yield b"partial"
                raise urllib3.exceptions.ProtocolError("Connection broken", ConnectionResetError(104, "reset"))

            def close(self):
                resp.close()

            def release_conn(self):
                resp.release_conn()

        return Broken()

    monkeypatch.setattr(store.client, "get_object", flaky_get)
    with pytest.raises(StorageError, match=r"cannot get object '.*obj' after 3 attempts: connection reset"):
        store.get_file("obj", dest)
    assert dest.read_bytes() == b"old" and _no_temp_files(tmp_path)
    monkeypatch.undo()
    store.get_file("obj", dest)
    assert dest.read_bytes() == b"new" * 1000


# -- S3 failures -------------------------------------------------------------------------------


def test_wrong_credentials_are_refused_with_a_clear_error(s3_server, caplog):
    bad = open_store(
        f"s3://test-{uuid.uuid4()}/run",
        endpoint=s3_server.endpoint,
        access_key="not-a-user",
        secret_key="not-a-secret",
        retry=StoreRetry(attempts=6, base_delay=1.0),
    )
    t0 = time.monotonic()
    for op in (lambda: bad.put_bytes("k", b"x"), lambda: bad.get_bytes("k"), bad.list):
        with pytest.raises(StorageError) as err:
            op()
        assert not isinstance(err.value, ObjectNotFound)
        msg = str(err.value)
        assert msg.startswith(f"s3 endpoint {s3_server.endpoint}: cannot ")
        assert "access denied" in msg and "AWS_ACCESS_KEY_ID" in msg and "\n" not in msg
    # a right key with a wrong secret too
    wrong_secret = open_store(
        f"s3://test-{uuid.uuid4()}/run",
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key="wrong",
    )
    with pytest.raises(StorageError, match="access denied"):
        wrong_secret.put_bytes("k", b"x")
    assert time.monotonic() - t0 < 5, "refusals must not be retried"
    assert not [r for r in caplog.records if r.name == "zhinao.storage"]
    # and the server really enforces credentials: anonymous requests are refused too
    import minio
    from minio.error import S3Error

    with pytest.raises(S3Error, match="AccessDenied"):
        minio.Minio(s3_server.endpoint.removeprefix("http://"), secure=False).list_buckets()


def test_unreachable_endpoint_fails_after_retries(caplog):
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_store("s3://bucket/runs/x", endpoint=endpoint, access_key="a", secret_key="b", retry=FAST)
    with caplog.at_level(logging.WARNING, logger="zhinao.storage"):
        with pytest.raises(StorageError) as err:
            store.put_bytes("checkpoints/step-00000010/model.pt", b"x")
    assert str(err.value) == (
        f"s3 endpoint {endpoint}: cannot put object 'runs/x/checkpoints/step-00000010/model.pt' "
        "after 3 attempts: connection refused"
    )
    retries = [r for r in caplog.records if r.name == "zhinao.storage"]
    assert len(retries) == 2 and all(r.levelno == logging.WARNING for r in retries)
    assert "attempt 1/3" in retries[0].getMessage() and "connection refused" in retries[0].getMessage()
    with pytest.raises(StorageError, match="after 3 attempts: connection refused"):
        store.list()


def test_env_supplies_endpoint_and_credentials(s3_server, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    store = open_store(f"s3://test-{uuid.uuid4()}/from-env", retry=FAST)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    assert store.url("k").endswith("/from-env/k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageError, match=rf"s3 endpoint {s3_server.endpoint}: .*access denied"):
        open_store(store.uri, retry=FAST).get_bytes("k")


def _restart_later(server: SeaweedS3, delay: float, errors: list) -> threading.Thread:
    def run():
        try:
            time.sleep(delay)
            server.start()
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


PATIENT = StoreRetry(attempts=40, base_delay=0.05, max_delay=0.25, connect_timeout=1.0, read_timeout=1.5)


def test_server_down_then_back_within_retry_window(fresh_s3_server, caplog):
    store = fresh_s3_server.store(retry=PATIENT)
    store.put_bytes("before", b"survives restarts")
    fresh_s3_server.stop(grace=0)  # crash
    errors: list = []
    t = _restart_later(fresh_s3_server, 0.2, errors)
    with caplog.at_level(logging.WARNING, logger="zhinao.storage"):
        store.put_bytes("after", b"made it")
    t.join(timeout=30)
    assert not errors
    assert store.get_bytes("after") == b"made it"
    assert store.get_bytes("before") == b"survives restarts"
    assert any("retrying" in r.getMessage() for r in caplog.records if r.name == "zhinao.storage")


def test_server_killed_mid_multipart_upload_then_back(fresh_s3_server, tmp_path):
    store = fresh_s3_server.store(retry=PATIENT)
    src = tmp_path / "model.pt"
    data = os.urandom(6 * MiB)  # two parts
    src.write_bytes(data)
    http = store.client._http  # our own PoolManager (see storage._http_client)
    real_urlopen = http.urlopen
    seen = {"part_puts": 0}
    errors: list = []
    restarts: list[threading.Thread] = []
    lock = threading.Lock()

    def urlopen(method, url, *args, **kwargs):
        with lock:
            if method == "PUT" and "partNumber=" in url:
                seen["part_puts"] += 1
                if seen["part_puts"] == 1:  # the upload has started: pull the plug
                    fresh_s3_server.stop(grace=0)
                    restarts.append(_restart_later(fresh_s3_server, 0.2, errors))
        return real_urlopen(method, url, *args, **kwargs)

    http.urlopen = urlopen
    store.put_file("checkpoints/model.pt", src)
    for t in restarts:
        t.join(timeout=30)
    assert seen["part_puts"] > 2, "the upload should have been retried after the crash"
    assert not errors
    out = tmp_path / "back.pt"
    store.get_file("checkpoints/model.pt", out)
    assert out.read_bytes() == data


# -- pure pieces -------------------------------------------------------------------------------


def test_open_store_uri_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = open_store("file://rel/dir")
    assert isinstance(rel, FileStore) and rel.uri == f"file://{tmp_path}/rel/dir"
    absolute = open_store(f"file://{tmp_path}/abs/")
    assert absolute.uri == f"file://{tmp_path}/abs"
    s3 = open_store("s3://my-bucket/a/b/", endpoint="http://127.0.0.1:1")
    assert isinstance(s3, S3Store) and s3.uri == "s3://my-bucket/a/b" and s3.bucket == "my-bucket"
    assert s3.endpoint == "http://127.0.0.1:1"
    assert open_store("s3://my-bucket", endpoint="https://s3.example.com").url("k") == "s3://my-bucket/k"
    for bad in ["gs://b/x", "/plain/path", "s3://Bad_Bucket/x", "s3:///x", "file://"]:
        with pytest.raises(ValueError):
            open_store(bad)
    with pytest.raises(ValueError, match="endpoint"):
        open_store("s3://my-bucket/x", endpoint="ftp://host")


def test_retry_policy_backoff_is_exponential_capped_and_jittered():
    p = StoreRetry(attempts=6, base_delay=0.5, max_delay=8.0)
    for retry, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        delays = {p.delay(retry) for _ in range(50)}
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1
    with pytest.raises(ValueError):
        StoreRetry(attempts=0)


def test_error_classification():
    refused = urllib3.exceptions.NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert is_transient(refused) and describe(refused) == "connection refused"
    timeout = urllib3.exceptions.ReadTimeoutError(None, "/x", "Read timed out.")
    assert is_transient(timeout) and describe(timeout) == "timed out"
    assert not is_transient(urllib3.exceptions.SSLError("certificate verify failed"))
    assert not is_transient(ValueError("bad"))

    from minio.error import S3Error, ServerError

    class Resp:
        def __init__(self, status):
            self.status = status

    def s3err(code, status):
        return S3Error(Resp(status), code, "msg", "/r", "id", None)

    assert is_transient(s3err("SlowDown", 503)) and is_transient(s3err("InternalError", 500))
    assert is_transient(s3err("SomethingOdd", 502))
    for code, status in [("NoSuchKey", 404), ("AccessDenied", 403), ("InvalidAccessKeyId", 403)]:
        assert not is_transient(s3err(code, status))
    assert is_transient(ServerError("boom", 503)) and not is_transient(ServerError("no", 403))
