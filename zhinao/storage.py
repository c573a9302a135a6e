"""Object storage: one small API over S3 (`s3://bucket/prefix`, through the minio SDK) and a local
directory (`file:///abs/path`, `file://relative/path`, the embedded default).

Keys are '/'-separated and relative to the store's root. Writes are atomic on both backends: a
reader sees either the whole new object or the old one, never half of it. Every failure surfaces
as `StorageError` (a missing object as its subclass `ObjectNotFound`) with one readable line that
names the endpoint or local path, the object key and the cause. S3 calls retry transient failures
(connection refused/reset, timeouts, HTTP 5xx, SlowDown) with exponential backoff and jitter under
a `StoreRetry`; the HTTP layer underneath does not retry on its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import random
import re
import shutil
import socket
import ssl
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import certifi
import minio
import urllib3
import urllib3.exceptions as ue
from minio.credentials import IamAwsProvider
from minio.credentials.providers import Provider
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from zhinao.config.runtime import ENV_S3_ENDPOINT

log = logging.getLogger("zhinao.storage")

T = TypeVar("T")

ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_SESSION_TOKEN = "AWS_SESSION_TOKEN"
ENV_REGION = "AWS_REGION"
DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"

# Marker in the names of in-flight temporary files; list() never reports them. The name goes on
# with the writer's pid@host, so that the next start can tell a killed writer's leftovers from a
# live writer's file (`sweep_stale_temp`).
_TMP_MARK = ".zhinao-tmp-"
_TMP_WRITER = re.compile(re.escape(_TMP_MARK) + r"(\d+)@(.+)-[0-9a-f]{12}$")
STALE_TEMP_SECONDS = 3600.0
"""A temporary file of a writer on another host counts as abandoned after this long untouched."""
_CHUNK = 1 << 20


class StorageError(RuntimeError):
    """An object-store operation failed; the message names where, which key and why, in one line."""


class ObjectNotFound(StorageError):
    """The object (or its bucket) does not exist."""


@dataclass(frozen=True)
class StoreRetry:
    attempts: int = 6
    """Total tries of one operation (1 = no retry)."""
    base_delay: float = 0.5
    """Delay before the first retry, in seconds; doubles each retry."""
    max_delay: float = 8.0
    """Cap on one delay."""
    connect_timeout: float = 5.0
    """Per-attempt TCP connect timeout (S3)."""
    read_timeout: float = 120.0
    """Per-attempt socket read timeout (S3)."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"StoreRetry.attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("StoreRetry delays must be >= 0")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based): exponential, capped, with jitter
        in [d/2, d] so that ranks retrying together spread out."""
        d = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        return d / 2 + random.uniform(0, d / 2)


# -- keys --------------------------------------------------------------------------------------


def check_key(key: str) -> str:
    """A key names an object: non-empty '/'-separated segments, no '.', '..' or empty segment."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"object key must be a non-empty string, got {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}: use '/'-separated names without '', '.' or '..' segments")
    return key


def _check_prefix(prefix: str) -> str:
    """A prefix is '' or a key-like string, optionally ending with '/'."""
    if not prefix:
        return ""
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _join(prefix: str, key: str) -> str:
    return f"{prefix.rstrip('/')}/{key}" if prefix else key


def tmp_next_to(dest: Path) -> Path:
    """The temporary file a write to `dest` goes through, named after its writer."""
    return dest.with_name(f".{dest.name}{_TMP_MARK}{os.getpid()}@{socket.gethostname()}-{uuid.uuid4().hex[:12]}")


def _writer_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def sweep_stale_temp(root: str | Path, *, now: float | None = None) -> list[Path]:
    """Remove the temporary files killed writers left under `root` (a FileStore root or a scratch
    directory) and return them. A file is abandoned when its writer ran on this host and is no longer
    alive, or, written elsewhere, when it has not changed for STALE_TEMP_SECONDS: a live writer's file
    is never touched."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    removed = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if _TMP_MARK not in name:
                continue
            path = Path(dirpath) / name
            m = _TMP_WRITER.search(name)
            try:
                if m and m.group(2) == host:
                    stale = _writer_gone(int(m.group(1)))
                else:
                    stale = now - path.stat().st_mtime > STALE_TEMP_SECONDS
                if stale:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # its writer finished meanwhile
                continue
    return removed


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ObjectStore(ABC):
    """A flat namespace of byte objects under a root URI."""

    uri: str
    """The root URI this store was opened at (normalised: no trailing '/', file:// made absolute)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Upload a local file (multipart on S3 for big files)."""

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Download to `path` atomically: a temporary file next to it, then rename."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Like `list`, with each object's size in bytes."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object and its version tag (the ETag on S3, a content hash locally)."""

    @abstractmethod
    def put_if(self, key: str, data: bytes, *, version: str | None) -> str | None:
        """Write only if the object is absent (`version` None) or still at `version`; the new version
        tag, or None when another writer got there first (S3 conditional writes: If-None-Match,
        If-Match)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys relative to the root that start with `prefix` (a plain string prefix: pass a
        trailing '/' to mean a directory), recursive, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing object is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object `list(prefix)` returns."""

    @abstractmethod
    def child(self, prefix: str) -> ObjectStore:
        """A store rooted at root/prefix, sharing this one's connection and settings."""

    def url(self, key: str = "") -> str:
        """The full URI of `key` (of the root when key is '')."""
        return _join(self.uri, key) if key else self.uri

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


# -- local directory ---------------------------------------------------------------------------


class FileStore(ObjectStore):
    def __init__(self, root: str | Path):
        self.root = Path(os.path.abspath(root))
        self.uri = "file://" + self.root.as_posix()
        self._where = f"local path {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _fail(self, verb: str, key: str, exc: BaseException) -> StorageError:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)) and verb == "get":
            return ObjectNotFound(f"{self._where}: cannot get object '{key}': no such object")
        return StorageError(_one_line(f"{self._where}: cannot {verb} object '{key}': {exc}"))

    @staticmethod
    def _tmp_next_to(dest: Path) -> Path:
        return tmp_next_to(dest)

    def _write_atomic(self, dest: Path, fill: Callable[[io.BufferedWriter], None]) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp_next_to(dest)
        try:
            with open(tmp, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        try:
            self._write_atomic(dest, lambda f: f.write(data))
        except OSError as exc:
            raise self._fail("put", key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise self._fail("get", key, exc) from exc

    def put_file(self, key: str, path: str | Path) -> None:
        dest = self._path(key)
        try:
            with open(path, "rb") as src:
                self._write_atomic(dest, lambda f: shutil.copyfileobj(src, f, _CHUNK))
        except OSError as exc:
            raise self._fail("put", key, exc) from exc

    def get_file(self, key: str, path: str | Path) -> None:
        src_path = self._path(key)
        try:
            with open(src_path, "rb") as src:
                self._write_atomic(Path(path), lambda f: shutil.copyfileobj(src, f, _CHUNK))
        except OSError as exc:
            raise self._fail("get", key, exc) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def sizes(self, prefix: str = "") -> dict[str, int]:
        out = {}
        for key in self.list(prefix):
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                out[key] = self._path(key).stat().st_size
        return out

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def put_if(self, key: str, data: bytes, *, version: str | None) -> str | None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Writers of one key take turns on a lock file beside it (hidden like a temp file).
            with open(dest.with_name(f".{dest.name}{_TMP_MARK}lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = hashlib.sha256(dest.read_bytes()).hexdigest() if dest.is_file() else None
                if current != version:
                    return None
                self._write_atomic(dest, lambda f: f.write(data))
                return hashlib.sha256(data).hexdigest()
        except OSError as exc:
            raise self._fail("put", key, exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        prefix = _check_prefix(prefix)
        # Walk only the deepest directory the prefix fully names.
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        keys: list[str] = []
        if not start.is_dir():
            return keys
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if _TMP_MARK in name:
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._fail("delete", key, exc) from exc
        self._prune_empty_dirs(path.parent)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)

    def _prune_empty_dirs(self, d: Path) -> None:
        while d != self.root and self.root in d.parents:
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    def child(self, prefix: str) -> FileStore:
        prefix = _check_prefix(prefix).rstrip("/")
        return FileStore(self.root / prefix) if prefix else FileStore(self.root)


# -- S3 ----------------------------------------------------------------------------------------

_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
    }
)
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling", "ThrottlingException"}
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound", "ResourceNotFound"})


def _chain(exc: BaseException):
    """exc, then what it wraps (MaxRetryError.reason, __cause__, __context__, exception args)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.append(getattr(e, "reason", None) if isinstance(getattr(e, "reason", None), BaseException) else None)
        todo += [e.__cause__, e.__context__]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]


def _s3_code(exc: BaseException) -> str | None:
    return exc.code if isinstance(exc, S3Error) else None


def _http_status(exc: BaseException) -> int | None:
    if isinstance(exc, S3Error):
        return getattr(exc.response, "status", None)
    if isinstance(exc, ServerError):
        return exc.status_code
    if isinstance(exc, InvalidResponseError):
        return getattr(exc, "_code", None)
    return None


def is_missing(exc: BaseException) -> bool:
    return _s3_code(exc) in _MISSING_CODES


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the network or the server hiccupped, not a refusal or a missing object."""
    code = _s3_code(exc)
    if code is not None:
        if code in _MISSING_CODES or code in _AUTH_CODES:
            return False
        status = _http_status(exc) or 0
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    status = _http_status(exc)
    if status is not None:
        return status >= 500 or status == 429
    for e in _chain(exc):
        if isinstance(e, (ue.SSLError, ssl.SSLError, ue.LocationValueError)):
            return False
    transient = (
        ue.TimeoutError,
        ue.NewConnectionError,
        ue.ProtocolError,
        ue.MaxRetryError,
        ue.IncompleteRead,
        ue.ResponseError,
        ConnectionError,
        TimeoutError,
        socket.timeout,
    )
    return isinstance(exc, transient)


def describe(exc: BaseException) -> str:
    """A short human cause for an S3/network exception."""
    code = _s3_code(exc)
    if code is not None:
        msg = getattr(exc, "message", None) or ""
        if code in _AUTH_CODES:
            return (
                f"access denied ({code}: {msg}); check the credentials "
                f"({ENV_ACCESS_KEY} / {ENV_SECRET_KEY}) and their permissions on the bucket"
            )
        if code == "NoSuchBucket":
            bucket = getattr(exc, "bucket_name", None)
            return f"no such bucket{f' {bucket!r}' if bucket else ''}"
        if code == "NoSuchKey":
            return "no such object"
        return f"{code}: {msg}" if msg else code
    status = _http_status(exc)
    if status is not None:
        return f"HTTP {status} from server"
    for e in _chain(exc):
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(e, BrokenPipeError):
            return "connection closed by peer (broken pipe)"
        if isinstance(e, ConnectionAbortedError):
            return "connection aborted"
        if isinstance(e, (ue.SSLError, ssl.SSLError)):
            return f"TLS error: {e}"
        if isinstance(e, (ue.TimeoutError, TimeoutError, socket.timeout)) and not isinstance(e, ue.NewConnectionError):
            return "timed out"
        if isinstance(e, socket.gaierror):
            return f"cannot resolve host ({e.strerror or e})"
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, ue.ProtocolError):
        return f"connection broken ({text})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _wrappable(exc: BaseException) -> bool:
    return isinstance(exc, (MinioException, ue.HTTPError, OSError, ValueError))


@dataclass
class _S3Conn:
    """What a store and its children share."""

    client: object
    endpoint: str
    bucket: str
    retry: StoreRetry


def _parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """'http://host:port' -> ('host:port', False); a bare 'host[:port]' means https."""
    endpoint = endpoint.strip()
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"invalid S3 endpoint {endpoint!r}: expected http(s)://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"invalid S3 endpoint {endpoint!r}: no path allowed, only http(s)://host[:port]")
    return parts.netloc, parts.scheme == "https"


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3Store(ObjectStore):
    def __init__(self, conn: _S3Conn, prefix: str):
        self._conn = conn
        self.bucket = conn.bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._where = f"s3 endpoint {conn.endpoint}"

    @property
    def endpoint(self) -> str:
        return self._conn.endpoint

    @property
    def client(self):
        """The underlying minio.Minio client."""
        return self._conn.client

    def _obj(self, key: str) -> str:
        return _join(self.prefix, check_key(key))

    # One operation with retries; `what` is e.g. "put object 'runs/x/a'" for messages.
    def _call(self, what: str, fn: Callable[[], T], *, missing: Callable[[], T] | None = None) -> T:
        policy = self._conn.retry
        for attempt in range(1, policy.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if not _wrappable(exc):
                    raise
                if is_missing(exc):
                    if missing is not None:
                        return missing()
                    raise ObjectNotFound(_one_line(f"{self._where}: cannot {what}: {describe(exc)}")) from exc
                if not is_transient(exc):
                    raise StorageError(_one_line(f"{self._where}: cannot {what}: {describe(exc)}")) from exc
                if attempt == policy.attempts:
                    raise StorageError(
                        _one_line(f"{self._where}: cannot {what} after {policy.attempts} attempts: {describe(exc)}")
                    ) from exc
                delay = policy.delay(attempt)
                log.warning(
                    "%s: %s failed (attempt %d/%d): %s; retrying in %.2fs",
                    self._where,
                    what,
                    attempt,
                    policy.attempts,
                    describe(exc),
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _create_bucket(self) -> None:
        """Create the bucket; another rank creating it at the same time is fine."""
        client = self._conn.client
        if client.bucket_exists(self.bucket):
            return
        try:
            client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _write(self, what: str, do: Callable[[], object]) -> None:
        """A write that creates the bucket when the server says it is missing, then tries again."""

        def attempt() -> None:
            try:
                do()
                return
            except Exception as exc:
                if _s3_code(exc) != "NoSuchBucket":
                    raise
            self._create_bucket()
            do()

        self._call(what, attempt)

    def put_bytes(self, key: str, data: bytes) -> None:
        obj = self._obj(key)
        data = bytes(data)
        self._write(
            f"put object '{obj}'",
            lambda: self._conn.client.put_object(self.bucket, obj, io.BytesIO(data), len(data)),
        )

    def get_bytes(self, key: str) -> bytes:
        obj = self._obj(key)

        def fetch() -> bytes:
            resp = self._conn.client.get_object(self.bucket, obj)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call(f"get object '{obj}'", fetch)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        obj = self._obj(key)

        def fetch() -> tuple[bytes, str]:
            resp = self._conn.client.get_object(self.bucket, obj)
            try:
                return resp.read(), resp.headers.get("ETag", "")
            finally:
                resp.close()
                resp.release_conn()

        return self._call(f"get object '{obj}'", fetch)

    def put_if(self, key: str, data: bytes, *, version: str | None) -> str | None:
        obj = self._obj(key)
        condition = {"If-None-Match": "*"} if version is None else {"If-Match": version}
        result: list[str | None] = []

        def put() -> None:
            try:  # minio's put_object takes no condition headers; its request layer does
                resp = self._conn.client._execute("PUT", self.bucket, obj, body=bytes(data), headers=condition)
                result.append(resp.headers.get("ETag", ""))
            except S3Error as exc:
                if exc.code not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise
                result.append(None)

        self._write(f"put object '{obj}' (conditional)", put)
        return result[-1]

    def put_file(self, key: str, path: str | Path) -> None:
        obj = self._obj(key)
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"{self._where}: cannot put object '{obj}': local file {path} does not exist")
        self._write(f"put object '{obj}'", lambda: self._conn.client.fput_object(self.bucket, obj, str(path)))

    def get_file(self, key: str, path: str | Path) -> None:
        obj = self._obj(key)
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def fetch() -> None:
            tmp = tmp_next_to(dest)
            try:
                resp = self._conn.client.get_object(self.bucket, obj)
                try:
                    with open(tmp, "wb") as f:
                        for chunk in resp.stream(_CHUNK):
                            f.write(chunk)
                        f.flush()
                        os.fsync(f.fileno())
                finally:
                    resp.close()
                    resp.release_conn()
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)

        self._call(f"get object '{obj}'", fetch)

    def exists(self, key: str) -> bool:
        obj = self._obj(key)

        def stat() -> bool:
            self._conn.client.stat_object(self.bucket, obj)
            return True

        return self._call(f"stat object '{obj}'", stat, missing=lambda: False)

    def _list_full(self, prefix: str) -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix

        def scan() -> list[str]:
            return [
                o.object_name
                for o in self._conn.client.list_objects(self.bucket, prefix=full or None, recursive=True)
                if not o.is_dir and not o.object_name.endswith("/")
            ]

        return self._call(f"list objects under '{full}'", scan, missing=list)

    def sizes(self, prefix: str = "") -> dict[str, int]:
        prefix = _check_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        cut = len(self.prefix) + 1 if self.prefix else 0

        def scan() -> dict[str, int]:
            listing = self._conn.client.list_objects(self.bucket, prefix=full or None, recursive=True)
            return {o.object_name[cut:]: o.size for o in listing if not o.object_name.endswith("/")}

        return self._call(f"list objects under '{full}'", scan, missing=dict)

    def list(self, prefix: str = "") -> list[str]:
        prefix = _check_prefix(prefix)
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(name[cut:] for name in self._list_full(prefix))

    def delete(self, key: str) -> None:
        obj = self._obj(key)
        self._call(
            f"delete object '{obj}'", lambda: self._conn.client.remove_object(self.bucket, obj), missing=lambda: None
        )

    def delete_prefix(self, prefix: str) -> None:
        prefix = _check_prefix(prefix)
        names = self._list_full(prefix)
        if not names:
            return
        shown = _join(self.prefix, prefix) if self.prefix else prefix

        def remove() -> None:
            errors = list(self._conn.client.remove_objects(self.bucket, (DeleteObject(n) for n in names)))
            errors = [e for e in errors if e.code not in _MISSING_CODES]
            if errors:
                first = errors[0]
                raise StorageError(
                    _one_line(
                        f"{self._where}: cannot delete {len(errors)} object(s) under '{shown}', "
                        f"first '{first.name}': {first.code}: {first.message}"
                    )
                )

        self._call(f"delete objects under '{shown}'", remove)

    def child(self, prefix: str) -> S3Store:
        prefix = _check_prefix(prefix).strip("/")
        return S3Store(self._conn, _join(self.prefix, prefix) if self.prefix else prefix)


def _http_client(retry: StoreRetry):
    """A pool manager that neither retries nor follows redirects by itself: StoreRetry is the
    retry, and a dead endpoint fails each attempt within connect_timeout."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=retry.connect_timeout, read=retry.read_timeout),
        retries=False,
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )


# Set in the pod by the cloud when its ServiceAccount is bound to a role: IRSA (a projected token
# exchanged at STS) and EKS Pod Identity / ECS (a local credential agent).
WORKLOAD_IDENTITY_ENV = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


def _workload_identity() -> Provider | None:
    """Keys from the pod's workload identity when it has one and no static keys are given; else
    None (anonymous). minio's IamAwsProvider reads the same variables and refreshes before expiry."""
    if not any(os.environ.get(var) for var in WORKLOAD_IDENTITY_ENV):
        return None
    return IamAwsProvider()


def open_store(
    uri: str,
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str | None = None,
    retry: StoreRetry = StoreRetry(),
) -> ObjectStore:
    """Open `s3://bucket[/prefix]` or `file:///abs/path` / `file://relative/path`.

    S3 settings default to the environment: ZHINAO_S3_ENDPOINT (http://host:port; https means TLS;
    AWS when unset), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), AWS_REGION;
    without keys, the pod's workload identity (WORKLOAD_IDENTITY_ENV) if it has one. Nothing is contacted until the first operation; a write into a missing bucket creates it.
    """
    if uri.startswith("file://"):
        path = uri[len("file://") :]
        if not path:
            raise ValueError(f"invalid store URI {uri!r}: file:// needs a path")
        return FileStore(path)
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET_RE.match(bucket):
            raise ValueError(f"invalid store URI {uri!r}: {bucket!r} is not a valid S3 bucket name")
        prefix = prefix.strip("/")
        if prefix:
            _check_prefix(prefix)
        endpoint = endpoint or os.environ.get(ENV_S3_ENDPOINT) or DEFAULT_S3_ENDPOINT
        netloc, secure = _parse_endpoint(endpoint)
        session_token = None
        if access_key is None:
            access_key = os.environ.get(ENV_ACCESS_KEY)
            session_token = os.environ.get(ENV_SESSION_TOKEN) or None
        secret_key = secret_key if secret_key is not None else os.environ.get(ENV_SECRET_KEY)
        if access_key and not secret_key:
            raise ValueError(f"S3 access key given for {endpoint} but no secret key ({ENV_SECRET_KEY})")
        client = minio.Minio(
            netloc,
            access_key=access_key or None,
            secret_key=secret_key or None,
            session_token=session_token if access_key else None,
            credentials=None if access_key else _workload_identity(),
            secure=secure,
            region=region or os.environ.get(ENV_REGION) or None,
            http_client=_http_client(retry),
        )
        shown = f"{'https' if secure else 'http'}://{netloc}"
        return S3Store(_S3Conn(client=client, endpoint=shown, bucket=bucket, retry=retry), prefix)
    raise ValueError(f"unsupported store URI {uri!r}: expected s3://bucket/prefix or file:///path")
