"""A recipe's mixture packed into token shards by every rank of the prepare job, as one process packs it.

Rank 0 writes the mixture's documents (train/docs/) and, from the token length of each (measured
before the mixing), a `Plan`: rank r tokenizes the documents [starts[r], starts[r+1]), a contiguous
run of about 1/W of the tokens, and knows where each source's token stream stands at its first
document. Shard j of a source is then the same tokens whatever the number of ranks: a rank writes
the shards that lie wholly in its span under the name one process gives them, and its part of the
others as a piece (zhinao.data.token_shards.SpanPacker); after a barrier rank 0 joins the pieces of
each such shard and merges the index parts. A W-rank preparation so writes the 1-rank one's files.
"""

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from zhinao.ablation.mixture import part_key
from zhinao.artifacts import StageOutput
from zhinao.corpus import jsonl_lines, read_documents
from zhinao.data.token_shards import (
    WIRE_DTYPE,
    Piece,
    Shard,
    SpanPacker,
    TokenIndex,
    join_pieces,
    shard_bytes,
    shard_name,
)
from zhinao.data.tokenize_shards import merge_parts, pack_documents
from zhinao.tokenizer import EOD

DOCS = "docs"
"""The mixture's documents under the recipe's train/ prefix (the tokenizer stage's corpus layout)."""
SOURCE_FIELD = "source"


def source_of(record: dict) -> str:
    """The stream a document is packed in, as zhinao.corpus.read_documents names it."""
    return str(record.get(SOURCE_FIELD) or "default")


@dataclass
class Plan:
    """Which documents of the mixture each rank packs, and where each source's stream stands there."""

    parts: list[int] = field(default_factory=list)
    """Documents per part file of docs/, in order."""
    starts: list[int] = field(default_factory=list)
    """The first document of each rank, then the number of documents."""
    offsets: list[dict[str, int]] = field(default_factory=list)
    """At each of `starts`: per source, the tokens of its stream before that document."""

    def span(self, rank: int) -> dict[str, int]:
        """Per source, the tokens rank `rank` packs."""
        before, after = self.offsets[rank], self.offsets[rank + 1]
        return {s: n - before.get(s, 0) for s, n in after.items() if n > before.get(s, 0)}


class Planner:
    """Follows the mixture as rank 0 writes it (document, token length) and cuts it into world_size
    runs of about equal tokens."""

    def __init__(self, *, total_tokens: int, world_size: int):
        self.targets = [total_tokens * r // world_size for r in range(1, world_size)]
        self.plan = Plan(starts=[0], offsets=[{}])
        self._tokens: dict[str, int] = {}
        self._seen = self._taken = 0

    def follow(self, docs: Iterable[tuple[dict, int]]) -> Iterator[dict]:
        for record, length in docs:
            while len(self.plan.starts) <= len(self.targets) and self._taken >= self.targets[len(self.plan.starts) - 1]:
                self._cut()
            source = source_of(record)
            self._tokens[source] = self._tokens.get(source, 0) + int(length)
            self._taken += int(length)
            self._seen += 1
            yield record

    def finish(self, parts: list[int]) -> Plan:
        while len(self.plan.starts) <= len(self.targets) + 1:
            self._cut()  # ranks past the end get no document
        self.plan.parts = parts
        return self.plan

    def _cut(self) -> None:
        self.plan.starts.append(self._seen)
        self.plan.offsets.append(dict(self._tokens))


def lines_between(train: StageOutput, parts: list[int], start: int, stop: int) -> Iterator[tuple[str, int, bytes]]:
    """Lines [start, stop) of the mixture's part files, reading only the parts they lie in."""
    first = 0
    for n, count in enumerate(parts):
        lo, hi = max(start, first), min(stop, first + count)
        if lo < hi:
            lines = jsonl_lines(train.store, [part_key(DOCS, n)])
            yield from itertools.islice(lines, lo - first, hi - first)
        first += count


def tokenize_span(
    train: StageOutput, tokenizer, plan: Plan, *, rank: int, seq_len: int, shard_tokens: int
) -> TokenIndex:
    """This rank's documents packed: its whole shards written, its pieces of the others put aside;
    returns its index part (rank 0 adds the joined shards to it)."""
    eod = tokenizer.convert_tokens_to_ids(EOD)
    shard_sequences = max(1, shard_tokens // seq_len)
    packers: dict[str, SpanPacker] = {}
    part = TokenIndex(seq_len=seq_len, vocab_size=len(tokenizer))

    def put(source: str, piece: Piece) -> None:
        if piece.whole:
            shard = packers[source].shard_of(piece)
            key = train.put_token_shard(shard_name(source, rank=0, n=piece.shard), shard_bytes(shard))
            part.shards.append(Shard(key, source, shard_sequences))
        else:
            train.put_token_piece(source, piece.shard, rank, shard_bytes(piece.tokens))

    def packer_for(source: str) -> SpanPacker:
        offset = plan.offsets[rank].get(source, 0)  # where this rank's first document of it starts
        packers[source] = SpanPacker(offset=offset, seq_len=seq_len, shard_sequences=shard_sequences, eod_id=eod)
        return packers[source]

    lines = lines_between(train, plan.parts, plan.starts[rank], plan.starts[rank + 1])
    docs = read_documents(train.store, source_field=SOURCE_FIELD, lines=lines)
    part.documents = pack_documents(docs, tokenizer, packer_for, put)
    packed = {s: p.tokens for s, p in packers.items()}
    if packed != plan.span(rank):  # the plan's lengths were measured with this tokenizer on these texts
        raise ValueError(
            f"{train.uri}: rank {rank} packed {packed} tokens per source where the mixing measured "
            f"{plan.span(rank)}: the documents changed during the preparation"
        )
    return part


def join_and_merge(train: StageOutput, part: TokenIndex, *, world_size: int, shard_tokens: int) -> TokenIndex:
    """Rank 0, after every rank wrote its shards, pieces and index part: each shard the ranks hold
    in pieces written whole (the stream's last one cut to whole sequences), then the one index."""
    shard_sequences = max(1, shard_tokens // part.seq_len)
    for (source, number), keys in sorted(train.token_pieces().items()):
        pieces = [np.frombuffer(train.store.get_bytes(k), dtype=WIRE_DTYPE) for k in keys]
        shard = join_pieces(pieces, seq_len=part.seq_len, shard_sequences=shard_sequences)
        if shard is not None:
            key = train.put_token_shard(shard_name(source, rank=0, n=number), shard_bytes(shard))
            part.shards.append(Shard(key, source, int(len(shard))))
    train.put_tokens_part(0, part)
    index = merge_parts(train, world_size=world_size, where=train.uri)
    train.delete_token_pieces()
    return index
