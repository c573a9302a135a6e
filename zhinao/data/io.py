"""Streaming input and output of the data stage: documents in, documents and rejects out.

Reading never holds more than one line (or one Parquet batch) in memory, and never raises on bad
content: a malformed, non-UTF-8, empty, text-less or gigantic line becomes a `Rejected` record with
the reason, so that every input line is accounted for either as output or as a reject. A file that
cannot be read on (truncated or not compressed as its name says, not Parquet, no text column) ends
with a `BadFile` record: the lines before the damage count as usual, the stage goes on.

Input formats, by name in any case: `.jsonl`, `.ndjson` and `.json` (one JSON document per line),
each optionally compressed (`.gz`, `.zst`/`.zstd`, `.bz2`), and `.parquet`.
"""

import base64
import bz2
import gzip
import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import zstandard

from zhinao.config.data import InputConfig
from zhinao.storage import ObjectStore

LINE_FORMATS = (".jsonl", ".ndjson", ".json")
COMPRESSIONS = ("", ".gz", ".zst", ".zstd", ".bz2")
INPUT_SUFFIXES = tuple(f + c for f in LINE_FORMATS for c in COMPRESSIONS) + (".parquet",)
"""Lowercase name endings the readers understand; other files are listed as skipped."""
LINE_BITS = 32  # gid = file_index << 32 | line number: global, and independent of world size


def make_gid(file_idx: int, line_no: int) -> int:
    return (file_idx << LINE_BITS) | line_no


def split_gid(gid: int) -> tuple[int, int]:
    return gid >> LINE_BITS, gid & ((1 << LINE_BITS) - 1)


@dataclass(slots=True)
class Doc:
    gid: int
    """Global id: input file index and line number (see `make_gid`); ties are broken by it."""
    text: str
    source: str
    url: str | None = None
    fields: dict = field(default_factory=dict)
    """The input record's other fields, passed through to the output."""
    whitelisted: bool = False
    known_nbytes: int = -1
    """UTF-8 size of `text` when the reader has measured it; -1 until `nbytes` is first read (a step
    that never asks, like MinHash on text it was handed, never encodes the text for it)."""

    @property
    def nbytes(self) -> int:
        if self.known_nbytes < 0:
            self.known_nbytes = len(self.text.encode("utf-8"))
        return self.known_nbytes

    def set_text(self, text: str) -> None:
        if text is not self.text:
            self.text = text
            self.known_nbytes = -1

    def to_spill(self) -> str:
        return json.dumps(
            [self.gid, self.text, self.source, self.url, self.fields, self.whitelisted, self.nbytes],
            ensure_ascii=False,
        )

    @classmethod
    def from_spill(cls, line: str) -> "Doc":
        gid, text, source, url, fields, white, nbytes = json.loads(line)
        return cls(gid, text, source, url, fields, white, nbytes)

    def to_record(self, cfg: InputConfig) -> dict:
        rec = dict(self.fields)
        rec[cfg.text_field] = self.text
        rec[cfg.source_field] = self.source
        if self.url is not None:
            rec[cfg.url_field] = self.url
        return rec


@dataclass(slots=True)
class BadFile:
    """The input file could not be read to its end (`reason`: truncated, not_gzip, not_zstd, not_bz2,
    not_parquet, no_text_column, unreadable); `lines` lines before the damage were read."""

    file_idx: int
    reason: str
    detail: str
    lines: int


@dataclass(slots=True)
class Rejected:
    gid: int
    reason: str
    raw: str
    raw_bytes: int
    raw_b64: str | None = None
    """The exact bytes, when they are not valid UTF-8 (JSON cannot carry them)."""


def is_input(key: str) -> bool:
    return key.lower().endswith(INPUT_SUFFIXES)


def list_inputs(store: ObjectStore) -> tuple[list[str], list[str]]:
    """(input keys, other keys) under the corpus prefix, sorted; the input order is the global file
    order that gids refer to. Keys under `_`-prefixed folders (work areas) are neither."""
    keys = [k for k in store.list() if "/_" not in f"/{k}"]
    return [k for k in keys if is_input(k)], [k for k in keys if not is_input(k)]


def _open_lines(path: Path):
    """The file as a binary stream, decompressed according to its name."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        return io.BufferedReader(_ZstdRaw(open(path, "rb")), buffer_size=1 << 20)
    return open(path, "rb")


class _ZstdRaw(io.RawIOBase):
    """A zstd file as a raw stream, frame after frame. zstandard's own reader ends quietly at a
    truncated frame; this one raises EOFError there, so a cut-off file is reported as truncated."""

    def __init__(self, f):
        self._f, self._buf, self._empty = f, b"", True
        self._d = zstandard.ZstdDecompressor().decompressobj()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            data = self._f.read(1 << 20)
            if not data:
                if not self._d.eof and not self._empty:
                    raise EOFError("zstd stream ended inside a frame")
                return 0
            self._empty = False
            while data:
                if self._d.eof:
                    self._d = zstandard.ZstdDecompressor().decompressobj()
                self._buf += self._d.decompress(data)
                data = self._d.unused_data if self._d.eof else b""
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)
"""What a damaged or mislabelled compressed file raises while it is read (gzip.BadGzipFile is an OSError)."""


def _bad_file(exc: BaseException, path: Path, file_idx: int, lines: int) -> BadFile:
    """What went wrong reading a compressed line file, as a reason a person can act on."""
    name = path.name.lower()
    kind = "gzip" if name.endswith(".gz") else "bz2" if name.endswith(".bz2") else "zstd"
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower() or "incomplete" in str(exc).lower():
        reason = "truncated"
    elif isinstance(exc, gzip.BadGzipFile) or (kind != "gzip" and lines == 0):
        reason = f"not_{kind}"
    else:
        reason = "unreadable"
    return BadFile(file_idx, reason, f"{type(exc).__name__}: {exc}"[:300], lines)


def _reject_raw(raw: bytes, limit: int, size: int | None = None) -> tuple[str, int]:
    """The first `limit` bytes as text (undecodable bytes replaced), and the true size."""
    size = len(raw) if size is None else size
    return raw[:limit].decode("utf-8", errors="replace"), size


def parse_record(obj: object, gid: int, cfg: InputConfig) -> Doc | str:
    """A Doc from one decoded record, or the reason it is not one."""
    if not isinstance(obj, dict):
        return "not_an_object"
    text = obj.get(cfg.text_field)
    if text is None:
        return "missing_text"
    if not isinstance(text, str):
        return "text_not_string"
    try:
        nbytes = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # JSON may carry lone surrogates ("\ud800")
        return "invalid_unicode"
    if not text.strip():
        return "empty_text"
    if nbytes > cfg.max_doc_bytes:
        return "gigantic"
    source = obj.get(cfg.source_field)
    url = obj.get(cfg.url_field)
    fields = {k: v for k, v in obj.items() if k not in (cfg.text_field, cfg.source_field, cfg.url_field)}
    return Doc(
        gid=gid,
        text=text,
        source=source if isinstance(source, str) and source else cfg.default_source,
        url=url if isinstance(url, str) and url else None,
        fields=fields,
        known_nbytes=nbytes,
    )


def read_jsonl(
    path: Path, file_idx: int, cfg: InputConfig, *, owned: Callable[[int], bool] = lambda _: True
) -> Iterator[Doc | Rejected | BadFile]:
    # JSON escapes can take 6 bytes per character: allow headroom before calling a line gigantic.
    limit = 4 * cfg.max_doc_bytes + 65_536
    lines = [0]  # read so far, for the BadFile record
    try:
        with _open_lines(path) as f:
            yield from _read_lines(f, file_idx, cfg, owned, limit, lines)
    except READ_ERRORS as exc:
        yield _bad_file(exc, path, file_idx, lines[0])


def _read_lines(f, file_idx: int, cfg: InputConfig, owned, limit: int, lines: list[int]) -> Iterator[Doc | Rejected]:
    line_no = -1
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        line_no += 1
        lines[0] = line_no + 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw)
            while chunk := f.readline(1 << 20):  # skip the rest without holding it
                size += len(chunk)
                if chunk.endswith(b"\n"):
                    break
            if owned(line_no):
                yield Rejected(make_gid(file_idx, line_no), "gigantic", *_reject_raw(raw, cfg.reject_raw_bytes, size))
            continue
        if not owned(line_no):
            continue
        yield _parse_line(raw, make_gid(file_idx, line_no), cfg)


def _fast_loads(body: bytes) -> object:
    """The record as orjson reads it (2x the standard module on web text), or `_SLOW` where it might
    differ from `json.loads`: orjson refuses NaN, Infinity, lone surrogates and a BOM, which json
    accepts, and reads an integer beyond 64 bits as a float, so any refusal and any record holding a
    float take the standard path."""
    try:
        obj = orjson.loads(body)
        return _SLOW if _has_float(obj) else obj
    except (orjson.JSONDecodeError, RecursionError):  # orjson nests 1,024 deep, Python recurses 1,000
        return _SLOW


_SLOW = object()


def _has_float(value: object) -> bool:
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return isinstance(value, float)


def _slow_loads(body: bytes, gid: int, cfg: InputConfig) -> object:
    """The record by the standard module, or the line's `Rejected`."""
    try:
        line = body.decode("utf-8")
    except UnicodeDecodeError:
        text, size = _reject_raw(body, cfg.reject_raw_bytes)
        return Rejected(gid, "invalid_utf8", text, size, base64.b64encode(body[: cfg.reject_raw_bytes]).decode())
    if not line.strip():
        return Rejected(gid, "blank_line", "", len(body))
    try:
        return json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return Rejected(gid, "malformed_json", *_reject_raw(body, cfg.reject_raw_bytes))


def _parse_line(raw: bytes, gid: int, cfg: InputConfig) -> Doc | Rejected:
    body = raw.rstrip(b"\r\n")
    obj = _fast_loads(body)
    if obj is _SLOW:
        obj = _slow_loads(body, gid, cfg)
        if isinstance(obj, Rejected):
            return obj
    doc = parse_record(obj, gid, cfg)
    if isinstance(doc, str):
        return Rejected(gid, doc, *_reject_raw(body, cfg.reject_raw_bytes))
    return doc


PARQUET_BATCH_ROWS = 1024
PARQUET_BATCH_BYTES = 64 << 20
"""A Parquet batch holds at most this many rows, and about this many (uncompressed) bytes."""


class _BadUtf8:
    """A Parquet string cell that is not valid UTF-8 (pyarrow refuses to convert it)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes | None):
        self.raw = raw


def _jsonable(value: object) -> object:
    """A Parquet cell as a JSON value: dates and times as ISO strings, bytes as base64, decimals as
    strings, so that passed-through fields survive the spill files and the JSONL output."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # map columns come out as lists of (key, value) tuples
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _column_values(col) -> list:
    """The cells of one batch column as Python values; a cell holding invalid UTF-8 becomes `_BadUtf8`."""
    import pyarrow as pa

    try:
        return col.to_pylist()
    except UnicodeDecodeError:
        pass
    is_text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    raw = col.cast(pa.large_binary()).to_pylist() if is_text else None
    out: list = []
    for i in range(len(col)):
        try:
            out.append(col[i].as_py())
        except UnicodeDecodeError:
            out.append(_BadUtf8(raw[i] if raw is not None else None))
    return out


def _parquet_batch_rows(pf) -> int:
    """Rows per batch: PARQUET_BATCH_ROWS, fewer when the rows are big (estimated from the row-group
    metadata), so that a batch of 1 MB pages does not take a GiB."""
    md = pf.metadata
    rows = sum(md.row_group(i).num_rows for i in range(md.num_row_groups))
    nbytes = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    if rows <= 0 or nbytes <= 0:
        return PARQUET_BATCH_ROWS
    return max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_BYTES * rows // nbytes))


def read_parquet(
    path: Path, file_idx: int, cfg: InputConfig, *, owned: Callable[[int], bool] = lambda _: True
) -> Iterator[Doc | Rejected | BadFile]:
    """Rows of a Parquet file as documents or rejects, one record batch at a time.

    A row is mapped like a JSONL line (`parse_record`): the same fields, the same reasons. Null
    cells of the other columns are left out of the passed-through fields, as a JSONL line would
    simply not have the key. A reject's `raw` is the row as a JSON line. A file that is not Parquet,
    has no text column or breaks off ends with a `BadFile`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        yield BadFile(file_idx, "not_parquet", f"{type(e).__name__}: {e}"[:300], 0)
        return
    with pf:
        names = pf.schema_arrow.names
        if cfg.text_field not in names:
            yield BadFile(
                file_idx, "no_text_column", f"no column {cfg.text_field!r} (input.textField); columns: {names}"[:300], 0
            )
            return
        row0 = 0
        try:
            for batch in pf.iter_batches(batch_size=_parquet_batch_rows(pf), use_threads=False):
                n = batch.num_rows
                rows = [r for r in range(row0, row0 + n) if owned(r)]
                if len(rows) < n:  # this rank keeps a stripe of the rows: convert only those
                    batch = batch.take(pa.array([r - row0 for r in rows], type=pa.int64()))
                row0 += n
                columns = [(name, _column_values(batch.column(i))) for i, name in enumerate(batch.schema.names)]
                for j, row in enumerate(rows):
                    yield _parse_row({name: vals[j] for name, vals in columns}, make_gid(file_idx, row), cfg)
        except (pa.ArrowException, OSError) as e:
            yield BadFile(file_idx, "unreadable", f"{type(e).__name__}: {e}"[:300], row0)


def _parse_row(cells: dict, gid: int, cfg: InputConfig) -> Doc | Rejected:
    bad = [k for k, v in cells.items() if isinstance(v, _BadUtf8)]
    if bad:
        text = cells[bad[0]].raw
        safe = {k: (None if isinstance(v, _BadUtf8) else _jsonable(v)) for k, v in cells.items()}
        body = json.dumps(safe, ensure_ascii=False).encode("utf-8")
        b64 = base64.b64encode(text[: cfg.reject_raw_bytes]).decode() if text is not None else None
        return Rejected(gid, "invalid_utf8", *_reject_raw(body, cfg.reject_raw_bytes), b64)
    obj = {k: v for k, v in cells.items() if v is not None or k == cfg.text_field}
    doc = parse_record(obj, gid, cfg)
    if isinstance(doc, str):
        body = json.dumps({k: _jsonable(v) for k, v in obj.items()}, ensure_ascii=False)
        return Rejected(gid, doc, *_reject_raw(body.encode("utf-8", errors="surrogatepass"), cfg.reject_raw_bytes))
    doc.fields = {k: _jsonable(v) for k, v in doc.fields.items()}
    return doc


def read_input(
    path: Path, file_idx: int, cfg: InputConfig, *, owned: Callable[[int], bool] = lambda _: True
) -> Iterator[Doc | Rejected | BadFile]:
    reader = read_parquet if path.name.lower().endswith(".parquet") else read_jsonl
    return reader(path, file_idx, cfg, owned=owned)


class ShardWriter:
    """JSONL records into `<prefix>/part-RRRRR-NNNNN.jsonl` objects, rolled every `per_file` lines.
    Lines go to a local file first; an object appears in the store only when complete."""

    def __init__(self, store: ObjectStore, prefix: str, *, rank: int, per_file: int, tmp_dir: str | None = None):
        self.store, self.prefix, self.rank, self.per_file = store, prefix, rank, per_file
        self._tmp = tempfile.mkdtemp(prefix="zhinao-shard-", dir=tmp_dir)
        self._part = 0
        self._lines = 0
        self._f = None
        self.keys: list[str] = []

    def write(self, record: dict) -> None:
        if self._f is None:
            self._f = open(os.path.join(self._tmp, "cur.jsonl"), "w", encoding="utf-8")
        self._f.write(json.dumps(record, ensure_ascii=False))
        self._f.write("\n")
        self._lines += 1
        if self._lines >= self.per_file:
            self._flush()

    def _flush(self) -> None:
        if self._f is None:
            return
        self._f.close()
        key = f"{self.prefix}/part-{self.rank:05d}-{self._part:05d}.jsonl"
        self.store.put_file(key, os.path.join(self._tmp, "cur.jsonl"))
        self.keys.append(key)
        self._f, self._lines, self._part = None, 0, self._part + 1

    def close(self) -> None:
        self._flush()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self._f is not None:
            self._f.close()


def reject_record(step: str, reason: str, item: Doc | Rejected, cfg: InputConfig) -> dict:
    """One line of `rejects/`: the original line (bad input) or the document, plus step and reason."""
    file_idx, line_no = split_gid(item.gid)
    rec = {"step": step, "reason": reason, "file_index": file_idx, "line": line_no}
    if isinstance(item, Rejected):
        rec["raw"] = item.raw
        rec["raw_bytes"] = item.raw_bytes
        if item.raw_bytes > cfg.reject_raw_bytes:
            rec["truncated"] = True
        if item.raw_b64 is not None:
            rec["raw_b64"] = item.raw_b64
    else:
        rec["doc"] = item.to_record(cfg)
    return rec
