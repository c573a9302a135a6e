"""Streaming input and output of the data stage: documents in, documents and rejects out.

Reading never holds more than one line (or one Parquet batch) in memory, and never raises on bad
content: a malformed, non-UTF-8, empty, text-less or gigantic line becomes a `Rejected` record with
the reason, so that every input line is accounted for either as output or as a reject.
"""

import base64
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zhinao.config.data import InputConfig
from zhinao.storage import ObjectStore

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
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
    nbytes: int = -1

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            self.nbytes = len(self.text.encode("utf-8"))

    def set_text(self, text: str) -> None:
        if text is not self.text:
            self.text = text
            self.nbytes = len(text.encode("utf-8"))

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
class Rejected:
    gid: int
    reason: str
    raw: str
    raw_bytes: int
    raw_b64: str | None = None
    """The exact bytes, when they are not valid UTF-8 (JSON cannot carry them)."""


def list_inputs(store: ObjectStore) -> list[str]:
    """Input keys under the corpus prefix, sorted: the global file order that gids refer to."""
    return [k for k in store.list() if k.endswith(INPUT_SUFFIXES) and "/_" not in f"/{k}"]


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
        nbytes=nbytes,
    )


def read_jsonl(
    path: Path, file_idx: int, cfg: InputConfig, *, owned: Callable[[int], bool] = lambda _: True
) -> Iterator[Doc | Rejected]:
    # JSON escapes can take 6 bytes per character: allow headroom before calling a line gigantic.
    limit = 4 * cfg.max_doc_bytes + 65_536
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        line_no = -1
        while True:
            raw = f.readline(limit + 1)
            if not raw:
                return
            line_no += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                size = len(raw)
                while chunk := f.readline(1 << 20):  # skip the rest without holding it
                    size += len(chunk)
                    if chunk.endswith(b"\n"):
                        break
                if owned(line_no):
                    yield Rejected(
                        make_gid(file_idx, line_no), "gigantic", *_reject_raw(raw, cfg.reject_raw_bytes, size)
                    )
                continue
            if not owned(line_no):
                continue
            yield _parse_line(raw, make_gid(file_idx, line_no), cfg)


def _parse_line(raw: bytes, gid: int, cfg: InputConfig) -> Doc | Rejected:
    body = raw.rstrip(b"\r\n")
    try:
        line = body.decode("utf-8")
    except UnicodeDecodeError:
        text, size = _reject_raw(body, cfg.reject_raw_bytes)
        return Rejected(gid, "invalid_utf8", text, size, base64.b64encode(body[: cfg.reject_raw_bytes]).decode())
    if not line.strip():
        return Rejected(gid, "blank_line", "", len(body))
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return Rejected(gid, "malformed_json", *_reject_raw(body, cfg.reject_raw_bytes))
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
) -> Iterator[Doc | Rejected]:
    """Rows of a Parquet file as documents or rejects, one record batch at a time.

    A row is mapped like a JSONL line (`parse_record`): the same fields, the same reasons. Null
    cells of the other columns are left out of the passed-through fields, as a JSONL line would
    simply not have the key. A reject's `raw` is the row as a JSON line. A file without the text
    column is not input at all and raises ValueError naming the file and its columns.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise RuntimeError(f"{path.name}: reading Parquet needs the pyarrow package (pip install pyarrow)") from e
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path.name} (input file {file_idx}): not a readable Parquet file: {e}") from e
    with pf:
        names = pf.schema_arrow.names
        if cfg.text_field not in names:
            raise ValueError(
                f"{path.name} (input file {file_idx}): Parquet file has no text column {cfg.text_field!r} "
                f"(input.textField); its columns are {names}"
            )
        row0 = 0
        for batch in pf.iter_batches(batch_size=_parquet_batch_rows(pf), use_threads=False):
            n = batch.num_rows
            rows = [r for r in range(row0, row0 + n) if owned(r)]
            if len(rows) < n:  # this rank keeps a stripe of the rows: convert only those
                batch = batch.take(pa.array([r - row0 for r in rows], type=pa.int64()))
            row0 += n
            columns = [(name, _column_values(batch.column(i))) for i, name in enumerate(batch.schema.names)]
            for j, row in enumerate(rows):
                yield _parse_row({name: vals[j] for name, vals in columns}, make_gid(file_idx, row), cfg)


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


def read_input(path: Path, file_idx: int, cfg: InputConfig, *, owned: Callable[[int], bool] = lambda _: True):
    reader = read_parquet if path.name.endswith(".parquet") else read_jsonl
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
