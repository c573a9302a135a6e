"""The record-shard format of the alignment stages' data: variable-length JSON records, streamable.

A shard (`records/<set>/r<rank>-<n>.rec`, keys owned by zhinao.artifacts) is a header of n + 1
little-endian uint64 offsets followed by the n records' UTF-8 JSON bytes: record i is the payload
range [offset[i], offset[i+1]), so two reads fetch any record without loading the shard, and a
shard's size checks itself against its header. `records/<set>/index.json` lists every shard with
its record count (the same index shape as token shards, so both stream through
zhinao.data.stream_order). Pure: numpy and json only.
"""

import json
from dataclasses import asdict, dataclass, field

import numpy as np

FORMAT = "zhinao-records/1"
OFFSET = np.dtype("<u8")


@dataclass(frozen=True)
class RecordShard:
    key: str
    records: int
    bytes: int


@dataclass
class RecordIndex:
    shards: list[RecordShard] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    """What preparing the records counted (read, dropped and why), summed over ranks."""

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "records": self.records,
            "counts": self.counts,
            "shards": [asdict(s) for s in self.shards],
        }
        return json.dumps(body, indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes, *, where: str) -> "RecordIndex":
        try:
            body = json.loads(raw)
            if body.get("format") != FORMAT:
                raise ValueError(f"format is {body.get('format')!r}, expected {FORMAT!r}")
            return cls(
                shards=[RecordShard(str(s["key"]), int(s["records"]), int(s["bytes"])) for s in body["shards"]],
                counts={str(k): int(v) for k, v in body.get("counts", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{where}: not a record index: {exc}") from None

    @classmethod
    def merge(cls, parts: list["RecordIndex"]) -> "RecordIndex":
        """One index over every rank's part; shards sorted by key so the result is deterministic."""
        counts: dict[str, int] = {}
        for p in parts:
            for k, v in p.counts.items():
                counts[k] = counts.get(k, 0) + v
        return cls(shards=sorted((s for p in parts for s in p.shards), key=lambda s: s.key), counts=counts)


def header_bytes(records: int) -> int:
    return (records + 1) * OFFSET.itemsize


def encode_shard(records: list[bytes]) -> bytes:
    offsets = np.zeros(len(records) + 1, dtype=OFFSET)
    np.cumsum([len(r) for r in records], out=offsets[1:])
    return offsets.tobytes() + b"".join(records)


def decode_record(raw: bytes) -> dict:
    return json.loads(raw)


class ShardWriter:
    """Collects encoded records and hands back a full shard once `max_bytes` of payload is held."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._records: list[bytes] = []
        self._held = 0

    def add(self, record: dict) -> list[bytes] | None:
        """Appends one record; returns the records of a full shard when this one filled it."""
        raw = json.dumps(record, separators=(",", ":")).encode()
        self._records.append(raw)
        self._held += len(raw)
        return self.finish() if self._held >= self.max_bytes else None

    def finish(self) -> list[bytes] | None:
        out, self._records, self._held = self._records, [], 0
        return out or None
