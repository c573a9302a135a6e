"""Stream packed token sequences from object storage: each rank reads only its share, through a
bounded local shard cache, in the seeded order of `stream_order`, with its position as a state dict.

Sequences are read from the cached shard files with pread, never loaded whole, so a rank's memory
does not depend on the corpus size, and its disk use is bounded by `cache_mb`.
"""

import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from zhinao.artifacts import StageOutput
from zhinao.config.stream import TokenStreamParams
from zhinao.data.stream_order import StreamOrder, StreamPosition
from zhinao.data.token_shards import WIRE_DTYPE, Shard

log = logging.getLogger(__name__)


class ShardCache:
    """Shard files downloaded on first use into `root`; past `max_bytes` the least recently read goes."""

    def __init__(self, source: StageOutput, root: Path, *, seq_len: int, max_bytes: int):
        self.source, self.root, self.max_bytes = source, root, max_bytes
        self.row_bytes = seq_len * WIRE_DTYPE.itemsize
        self._open: OrderedDict[str, tuple[int, int]] = OrderedDict()  # key -> (fd, size)
        self.downloads = 0
        root.mkdir(parents=True, exist_ok=True)

    def read(self, shard: Shard, index: int) -> np.ndarray:
        fd = self._fd(shard)
        raw = os.pread(fd, self.row_bytes, index * self.row_bytes)
        return np.frombuffer(raw, dtype=WIRE_DTYPE)

    def _fd(self, shard: Shard) -> int:
        if shard.key in self._open:
            self._open.move_to_end(shard.key)
            return self._open[shard.key][0]
        path = self.root / shard.key.replace("/", "__")
        self.source.fetch_token_shard(shard.key, path)
        self.downloads += 1
        size = path.stat().st_size
        if size != shard.sequences * self.row_bytes:
            path.unlink()
            raise ValueError(
                f"{self.source.token_shard_url(shard.key)}: {size} bytes, but the index says {shard.sequences} sequences of "
                f"{self.row_bytes} bytes"
            )
        fd = os.open(path, os.O_RDONLY)
        path.unlink()  # the open descriptor keeps the data; nothing is left behind on a crash
        self._open[shard.key] = (fd, size)
        while len(self._open) > 1 and sum(s for _, s in self._open.values()) > self.max_bytes:
            old_fd, _ = self._open.popitem(last=False)[1]
            os.close(old_fd)
        return fd

    def close(self) -> None:
        for fd, _ in self._open.values():
            os.close(fd)
        self._open.clear()


class TokenStream:
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
        self.order = StreamOrder(
            [s.sequences for s in self.index.shards],
            seed=seed,
            rank=rank,
            world_size=world_size,
            window=params.shuffle_window,
        )
        self.cache = ShardCache(source, cache_dir, seq_len=self.seq_len, max_bytes=params.cache_mb << 20)
        self.position = StreamPosition()
        window_bytes = params.shuffle_window * self.cache.row_bytes
        if window_bytes > self.cache.max_bytes:
            log.warning(
                "a shuffle window (%d sequences, %d MiB) is larger than the shard cache (%d MiB): shards will be "
                "downloaded more than once per epoch",
                params.shuffle_window,
                window_bytes >> 20,
                params.cache_mb,
            )

    def __len__(self) -> int:
        """Sequences this rank reads per epoch."""
        return self.order.per_rank

    def take(self, n: int) -> np.ndarray:
        out = np.empty((n, self.seq_len), dtype=WIRE_DTYPE)
        for i in range(n):
            shard, row = self.order.locate(self.position.epoch, self.position.offset)
            out[i] = self.cache.read(self.index.shards[shard], row)
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
