"""The distributed prepare step of the alignment stages' data: every rank turns its share of the
input JSONL lines (`zhinao.corpus.lines_of_rank`) into named record sets (e.g. `train`, `eval`) of
record shards in the stage's output, holding at most one shard per set in memory; rank 0 merges the
index parts once every rank is done. The stages then stream the sets (`RecordStream`).

A stage whose output already holds its sets (a resumed run) reads them as they are, so the data a
resumed run trains on is the data its checkpoints' positions refer to.
"""

import logging
from collections import Counter
from collections.abc import Iterable

from zhinao.artifacts import StageOutput
from zhinao.config.stream import RecordStreamParams
from zhinao.data.record_shards import RecordIndex, RecordShard, ShardWriter, encode_shard

log = logging.getLogger(__name__)


class RecordSetWriter:
    """One rank's writer of several record sets; `add` uploads each shard as soon as it is full."""

    def __init__(self, out: StageOutput, names: Iterable[str], *, rank: int, params: RecordStreamParams):
        self.out, self.rank = out, rank
        self.parts = {n: RecordIndex() for n in names}
        self.writers = {n: ShardWriter(params.shard_mb << 20) for n in self.parts}

    def add(self, name: str, record: dict) -> None:
        full = self.writers[name].add(record)
        if full:
            self._put(name, full)

    def finish(self, counts: Counter) -> None:
        """Upload the last shards and this rank's index parts (each part carries the rank's counts)."""
        for name, writer in self.writers.items():
            tail = writer.finish()
            if tail:
                self._put(name, tail)
            self.parts[name].counts = dict(counts)
            self.out.put_records_part(name, self.rank, self.parts[name])

    def _put(self, name: str, records: list[bytes]) -> None:
        part = self.parts[name]
        data = encode_shard(records)
        key = self.out.put_record_shard(name, f"r{self.rank:05d}-{len(part.shards):05d}", data)
        part.shards.append(RecordShard(key, len(records), len(data)))


def prepare_record_sets(
    session,
    out: StageOutput,
    names: list[str],
    produce,
    *,
    params: RecordStreamParams,
) -> dict[str, RecordIndex]:
    """Every rank runs `produce(counts)` (an iterable of (set name, record) from its share, counting
    what it reads and drops into `counts`) unless `out` holds the sets; returns the merged indexes.

    `session` is a TrainingSession (env, barrier); call on every rank."""
    env = session.env
    if not out.has_records(names[0]):
        writer = RecordSetWriter(out, names, rank=env.rank, params=params)
        counts: Counter = Counter()
        for name, record in produce(counts):
            writer.add(name, record)
        writer.finish(counts)
        session.barrier()
        if env.is_main:
            for name in names:
                out.write_records_index(
                    name, RecordIndex.merge([out.read_records_part(name, r) for r in range(env.world_size)])
                )
        log.info("rank %d prepared %s", env.rank, {n: p.records for n, p in writer.parts.items()})
    session.barrier()
    return {name: out.read_records_index(name) for name in names}


def merge_record_sets(out: StageOutput, names: list[str], *, world_size: int) -> None:
    """Rank 0, after every rank finished: each set's one index over all ranks' parts."""
    for name in names:
        out.write_records_index(name, RecordIndex.merge([out.read_records_part(name, r) for r in range(world_size)]))
