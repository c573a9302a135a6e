"""The tokenized-shard format: raw little-endian uint32 token files plus one JSON index.

A shard (`tokens/<source>-r<rank>-<n>.bin`, keys owned by zhinao.artifacts) is `sequences x seq_len`
tokens, nothing else, so any sequence is one byte range (offset = i * seq_len * 4) and a shard's size
checks itself against the index. `tokens/index.json` lists every shard with its sequence count (the
Megatron `.idx` reduced to what fixed-length packed sequences need). Each rank of the tokenize step
writes its own shards and an index part; rank 0 merges the parts. Pure: numpy and json only.
"""

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from zhinao.data.packing import TOKEN_DTYPE

FORMAT = "zhinao-tokens/1"
WIRE_DTYPE = np.dtype("<u4")  # TOKEN_DTYPE, byte order fixed on the wire
assert np.dtype(TOKEN_DTYPE).itemsize == WIRE_DTYPE.itemsize


@dataclass(frozen=True)
class Shard:
    key: str
    source: str
    sequences: int


@dataclass
class TokenIndex:
    seq_len: int
    vocab_size: int
    shards: list[Shard] = field(default_factory=list)
    documents: int = 0
    extra: dict = field(default_factory=dict)
    """Stage-specific counts (longctx: corpus and synthetic sequences), carried through unchanged."""

    @property
    def sequences(self) -> int:
        return sum(s.sequences for s in self.shards)

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "dtype": "uint32",
            "seq_len": self.seq_len,
            "vocab_size": self.vocab_size,
            "documents": self.documents,
            "sequences": self.sequences,
            "tokens": self.sequences * self.seq_len,
            **self.extra,
            "shards": [asdict(s) for s in self.shards],
        }
        return json.dumps(body, indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes, *, where: str) -> "TokenIndex":
        try:
            body = json.loads(raw)
            if body.get("format") != FORMAT:
                raise ValueError(f"format is {body.get('format')!r}, expected {FORMAT!r} (re-run the tokenize step)")
            known = {"format", "dtype", "seq_len", "vocab_size", "documents", "sequences", "tokens", "shards"}
            return cls(
                seq_len=int(body["seq_len"]),
                vocab_size=int(body["vocab_size"]),
                shards=[Shard(str(s["key"]), str(s["source"]), int(s["sequences"])) for s in body["shards"]],
                documents=int(body.get("documents", 0)),
                extra={k: v for k, v in body.items() if k not in known},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{where}: not a token index: {exc}") from None

    @classmethod
    def merge(cls, parts: list["TokenIndex"]) -> "TokenIndex":
        """One index over every rank's part; shards sorted by key so the result is deterministic."""
        if {(p.seq_len, p.vocab_size) for p in parts} != {(parts[0].seq_len, parts[0].vocab_size)}:
            raise ValueError("token index parts disagree on seq_len or vocab_size")
        return cls(
            seq_len=parts[0].seq_len,
            vocab_size=parts[0].vocab_size,
            shards=sorted((s for p in parts for s in p.shards), key=lambda s: s.key),
            documents=sum(p.documents for p in parts),
        )


def shard_name(source: str, *, rank: int, n: int) -> str:
    """The n-th shard of `source` written by `rank` (unique across the ranks of one tokenize step)."""
    return f"{source}-r{rank:05d}-{n:05d}"


def shard_bytes(sequences: np.ndarray) -> bytes:
    return np.ascontiguousarray(sequences, dtype=WIRE_DTYPE).tobytes()


class SpanPacker:
    """One rank's span of one source's token stream, cut where the whole stream is cut.

    Shard j of a source holds tokens [j * shard_tokens, (j + 1) * shard_tokens) of the concatenation of
    all its documents (each followed by <eod>), as SourcePacker cuts them in one process. A rank whose
    documents start at token `offset` of that stream returns the shards that lie wholly in its span
    and, for a shard it holds only part of, that piece (`Piece`); the pieces of one shard, put
    together in rank order, are the shard. Holds less than one shard between calls.
    """

    def __init__(self, *, offset: int, seq_len: int, shard_sequences: int, eod_id: int):
        self.shard_tokens = seq_len * shard_sequences
        self.seq_len, self.shard_sequences, self.eod = seq_len, shard_sequences, eod_id
        self.position = offset  # where the held tokens start in the source's stream
        self.tokens = 0  # tokens added so far
        self._parts: list[np.ndarray] = []
        self._held = 0

    def add(self, ids: list[int]) -> list["Piece"]:
        doc = np.empty(len(ids) + 1, dtype=TOKEN_DTYPE)
        doc[:-1] = ids
        doc[-1] = self.eod
        self._parts.append(doc)
        self._held += len(doc)
        self.tokens += len(doc)
        boundary = (self.position // self.shard_tokens + 1) * self.shard_tokens
        if self.position + self._held < boundary:
            return []
        stream = np.concatenate(self._parts)
        out = []
        while self.position + len(stream) >= boundary:
            cut = boundary - self.position
            out.append(Piece(self.position // self.shard_tokens, stream[:cut], whole=cut == self.shard_tokens))
            stream, self.position, boundary = stream[cut:], boundary, boundary + self.shard_tokens
        self._parts, self._held = [stream], len(stream)
        return out

    def finish(self) -> "Piece | None":
        """The tokens held after the last shard boundary: a piece of a shard another rank or the
        stream's end completes."""
        stream = np.concatenate(self._parts) if self._parts else np.empty(0, TOKEN_DTYPE)
        self._parts, self._held = [], 0
        return Piece(self.position // self.shard_tokens, stream, whole=False) if len(stream) else None

    def shard_of(self, piece: "Piece") -> np.ndarray:
        """A whole piece as its (shard_sequences, seq_len) shard."""
        return piece.tokens.reshape(self.shard_sequences, self.seq_len)


class SourcePacker:
    """Concatenates one source's documents, each followed by <eod>, and cuts full shards off the front.

    One process's packing of a whole source: a SpanPacker from the stream's start, whose pieces are
    then all whole shards but the tail. Holds less than one shard of tokens between calls (the
    report's packing, section 2.4, without keeping the source in memory); the incomplete last
    sequence is dropped at `finish`.
    """

    def __init__(self, *, seq_len: int, shard_sequences: int, eod_id: int):
        self._span = SpanPacker(offset=0, seq_len=seq_len, shard_sequences=shard_sequences, eod_id=eod_id)

    def add(self, ids: list[int]) -> list[np.ndarray]:
        """Appends one document; returns the (shard_sequences, seq_len) shards it completed."""
        return [self._span.shard_of(piece) for piece in self._span.add(ids)]

    def finish(self) -> np.ndarray | None:
        """The whole sequences still held, or None when less than one sequence is left."""
        tail = self._span.finish()
        if tail is None:
            return None
        return join_pieces([tail.tokens], seq_len=self._span.seq_len, shard_sequences=self._span.shard_sequences)


@dataclass(frozen=True)
class Piece:
    shard: int
    """Which shard of the source's stream (its number as one process names it)."""
    tokens: np.ndarray
    """Its tokens, in stream order: the whole shard's shard_sequences x seq_len, or a part's."""
    whole: bool
    """The whole shard, or a part that must be joined with the other ranks' parts."""


def join_pieces(pieces: list[np.ndarray], *, seq_len: int, shard_sequences: int) -> np.ndarray | None:
    """One shard from its pieces in rank order: a full shard, or the stream's last one, cut to its
    whole sequences (None when less than one sequence is left, as SourcePacker.finish)."""
    stream = np.concatenate(pieces) if pieces else np.empty(0, TOKEN_DTYPE)
    n = min(len(stream) // seq_len, shard_sequences)
    return stream[: n * seq_len].reshape(n, seq_len) if n else None
