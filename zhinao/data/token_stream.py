"""Stream samples from shards in object storage: each rank reads only its share, through a bounded
local shard cache, in the seeded order of `stream_order`, with its position as a state dict.

`ShardStream` is the one dataset layer every training stage reads through: `TokenStream` yields
pretraining's packed token sequences (zhinao.data.token_shards), `RecordStream` the alignment
stages' JSON records (zhinao.data.record_shards). Samples are read from the cached shard files with
pread, never loaded whole, so a rank's memory does not depend on the dataset size, and its disk use
is bounded by `cache_mb`.
"""

import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from zhinao.artifacts import StageOutput
from zhinao.config.stream import StreamParams, TokenStreamParams
from zhinao.data.record_shards import OFFSET, RecordIndex, decode_record, header_bytes
from zhinao.data.stream_order import PositionMismatch, StreamOrder, StreamPosition
from zhinao.data.token_shards import WIRE_DTYPE
from zhinao.storage import ObjectStore

log = logging.getLogger(__name__)


class ShardCache:
    """Shard files downloaded on first use into `root`; past `max_bytes` the least recently read goes."""

    def __init__(self, store: ObjectStore, root: Path, *, max_bytes: int):
        self.store, self.root, self.max_bytes = store, root, max_bytes
        self._open: OrderedDict[str, tuple[int, int]] = OrderedDict()  # key -> (fd, size)
        self.downloads = 0
        root.mkdir(parents=True, exist_ok=True)

    def read(self, key: str, *, size: int, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` of shard `key`, whose file must be `size` bytes long."""
        return os.pread(self._fd(key, size), length, offset)

    def _fd(self, key: str, size: int) -> int:
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key][0]
        # The ranks of one pod share its scratch directory, and ranks of a sequence-parallel group read
        # the same shards: each process downloads into a name of its own.
        path = self.root / f"{key.replace('/', '__')}.{os.getpid()}"
        self.store.get_file(key, path)
        self.downloads += 1
        got = path.stat().st_size
        if got != size:
            path.unlink()
            raise ValueError(f"{self.store.url(key)}: {got} bytes, but its index says {size}")
        fd = os.open(path, os.O_RDONLY)
        path.unlink()  # the open descriptor keeps the data; nothing is left behind on a crash
        self._open[key] = (fd, got)
        while len(self._open) > 1 and sum(s for _, s in self._open.values()) > self.max_bytes:
            old_fd, _ = self._open.popitem(last=False)[1]
            os.close(old_fd)
        return fd

    def close(self) -> None:
        for fd, _ in self._open.values():
            os.close(fd)
        self._open.clear()


class ShardStream:
    """This rank's endless stream over shards of `counts` samples; subclasses say how a sample reads."""

    def __init__(
        self,
        store: ObjectStore,
        counts: list[int],
        cache_dir: Path,
        *,
        seed: int,
        rank: int,
        world_size: int,
        params: StreamParams,
    ):
        self.order = StreamOrder(
            counts,
            seed=seed,
            rank=rank,
            world_size=world_size,
            window=params.shuffle_window,
            elastic=params.elastic,
        )
        self.cache = ShardCache(store, cache_dir, max_bytes=params.cache_mb << 20)
        self.position = StreamPosition()

    def __len__(self) -> int:
        """Samples this rank reads per epoch."""
        return self.order.per_rank

    def next_locations(self, n: int) -> list[tuple[int, int]]:
        """(shard, index within it) of this rank's next n samples; the position moves past them."""
        out = []
        for _ in range(n):
            out.append(self.order.at(self.position))
            self.position.advance(1, self.order.per_rank)
        return out

    def state_dict(self) -> dict:
        return self.order.state(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = self.order.position(state)

    def resume(self, meta: dict, *, samples_done: int) -> None:
        """Continue where a checkpoint's meta left off: its saved position (`data`), checked against
        this run; a checkpoint without one (written before positions were saved) by its sample count."""
        if "data" in meta:
            self.load_state_dict(meta["data"])
        else:
            self.position = StreamPosition()
            self.position.advance(samples_done, self.order.per_rank)

    def close(self) -> None:
        self.cache.close()


class TokenStream(ShardStream):
    """This rank's endless stream of (seq_len,) uint32 sequences; `take(n)` returns the next n."""

    def __init__(
        self,
        source: StageOutput,
        cache_dir: Path,
        *,
        seed: int,
        rank: int,
        world_size: int,
        params: TokenStreamParams,
    ):
        self.index = source.read_tokens_index()
        self.seq_len = self.index.seq_len
        counts = [s.sequences for s in self.index.shards]
        super().__init__(source.store, counts, cache_dir, seed=seed, rank=rank, world_size=world_size, params=params)
        self.row_bytes = self.seq_len * WIRE_DTYPE.itemsize
        self.read_ids: list[tuple[int, int]] | None = [] if params.record_samples else None
        """(shard, row) of each sequence taken since `pop_read_ids`, with `record_samples` on."""
        window_bytes = params.shuffle_window * self.row_bytes
        if window_bytes > self.cache.max_bytes:
            log.warning(
                "a shuffle window (%d sequences, %d MiB) is larger than the shard cache (%d MiB): shards will be "
                "downloaded more than once per epoch",
                params.shuffle_window,
                window_bytes >> 20,
                params.cache_mb,
            )

    def take(self, n: int) -> np.ndarray:
        out = np.empty((n, self.seq_len), dtype=WIRE_DTYPE)
        locations = self.next_locations(n)
        if self.read_ids is not None:
            self.read_ids.extend(locations)
        for i, (s, row) in enumerate(locations):
            shard = self.index.shards[s]
            raw = self.cache.read(
                shard.key, size=shard.sequences * self.row_bytes, offset=row * self.row_bytes, length=self.row_bytes
            )
            out[i] = np.frombuffer(raw, dtype=WIRE_DTYPE)
        return out

    def pop_read_ids(self) -> list[tuple[int, int]] | None:
        """The (shard, row) of the sequences taken since the last call; None unless recorded."""
        if self.read_ids is None:
            return None
        ids, self.read_ids = self.read_ids, []
        return ids


class RecordStream(ShardStream):
    """This rank's endless stream of prepared records (dicts) of one record set."""

    def __init__(
        self,
        source: StageOutput,
        name: str,
        cache_dir: Path,
        *,
        seed: int,
        rank: int,
        world_size: int,
        params: StreamParams,
    ):
        self.index: RecordIndex = source.read_records_index(name)
        counts = [s.records for s in self.index.shards]
        super().__init__(source.store, counts, cache_dir, seed=seed, rank=rank, world_size=world_size, params=params)

    def take(self, n: int) -> list[dict]:
        return [self.read(s, i) for s, i in self.next_locations(n)]

    def read(self, s: int, i: int) -> dict:
        shard = self.index.shards[s]
        lo, hi = np.frombuffer(
            self.cache.read(shard.key, size=shard.bytes, offset=i * OFFSET.itemsize, length=2 * OFFSET.itemsize),
            dtype=OFFSET,
        )
        start = header_bytes(shard.records) + int(lo)
        return decode_record(self.cache.read(shard.key, size=shard.bytes, offset=start, length=int(hi - lo)))


def open_token_stream(
    source: StageOutput,
    cache_dir: Path,
    *,
    seq_len: int,
    seed: int,
    rank: int,
    world_size: int,
    params: TokenStreamParams,
) -> TokenStream:
    """A stage's stream of packed sequences, or one line that ends the stage: a foreign index, a shard
    of the wrong size, fewer sequences than ranks, or sequences of another length than `seq_len`."""
    try:
        stream = TokenStream(source, cache_dir, seed=seed, rank=rank, world_size=world_size, params=params)
    except ValueError as exc:
        raise SystemExit(f"{source.uri}: {exc}") from None
    if stream.seq_len != seq_len:
        raise SystemExit(f"token shards hold sequences of {stream.seq_len} tokens, but seqLen is {seq_len}")
    return stream


def resume_stream(stream: ShardStream, meta: dict, *, samples_done: int) -> None:
    """Position `stream` where a checkpoint's meta left it; a position this run cannot take (another
    world size, another order) ends the stage with its one line."""
    try:
        stream.resume(meta, samples_done=samples_done)
    except PositionMismatch as exc:
        raise SystemExit(str(exc)) from None
