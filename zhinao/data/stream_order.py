"""Which sequence a rank reads next: a pure function of (seed, epoch, offset), so its state is 3 numbers.

Per epoch, the shards are put in a seeded random order and viewed as one concatenated array of N
sequences. Rank r of W owns the contiguous slice [r*M, (r+1)*M), M = N // W (the last N mod W
sequences of the epoch's order are skipped, as DistributedSampler's drop_last does), so a rank reads
only the shards that overlap its slice. The slice is read in windows of `window` sequences, each in
a seeded random order. Memory: the shard counts plus one window's permutation, whatever N is.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

STATE_VERSION = 1


class PositionMismatch(ValueError):
    """A saved data position does not belong to this run's data, seed or world size."""


@dataclass
class StreamPosition:
    """The next sample of this rank: `offset` within its slice of `epoch` (the same on every rank)."""

    epoch: int = 0
    offset: int = 0

    def advance(self, n: int, per_epoch: int) -> None:
        self.epoch, self.offset = divmod(self.epoch * per_epoch + self.offset + n, per_epoch)


class StreamOrder:
    def __init__(self, counts: list[int], *, seed: int, rank: int, world_size: int, window: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.total = int(self.counts.sum())
        self.per_rank = self.total // world_size
        if self.per_rank == 0:
            raise ValueError(f"the shards hold {self.total} samples, fewer than the {world_size} ranks")
        self.seed, self.rank, self.world_size, self.window = seed, rank, world_size, window

    @lru_cache(maxsize=2)  # noqa: B019 (one order per stream, a handful of epochs apart)
    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.counts))
        return order, np.concatenate([[0], np.cumsum(self.counts[order])])

    @lru_cache(maxsize=2)  # noqa: B019
    def _window(self, epoch: int, w: int) -> np.ndarray:
        size = min(self.window, self.per_rank - w * self.window)
        return np.random.default_rng([self.seed, epoch, self.rank, w]).permutation(size)

    def locate(self, epoch: int, offset: int) -> tuple[int, int]:
        """(shard index, sequence within the shard) of this rank's `offset`-th sample of `epoch`."""
        w, k = divmod(offset, self.window)
        g = self.rank * self.per_rank + w * self.window + int(self._window(epoch, w)[k])
        order, starts = self._epoch(epoch)
        i = int(np.searchsorted(starts, g, side="right")) - 1
        return int(order[i]), g - int(starts[i])

    def shards_of_window(self, epoch: int, offset: int) -> list[int]:
        """The shards the window holding `offset` reads, in order (what to have cached)."""
        w = offset // self.window
        lo = self.rank * self.per_rank + w * self.window
        hi = lo + min(self.window, self.per_rank - w * self.window)
        order, starts = self._epoch(epoch)
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        last = int(np.searchsorted(starts, hi - 1, side="right")) - 1
        return [int(s) for s in order[first : last + 1]]

    def state(self, pos: StreamPosition) -> dict:
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "world_size": self.world_size,
            "sequences": self.total,
            "epoch": pos.epoch,
            "offset": pos.offset,
        }

    def position(self, state: dict) -> StreamPosition:
        """The position a checkpoint saved, or PositionMismatch saying why it does not apply here."""
        if state.get("version") != STATE_VERSION:
            raise PositionMismatch(f"data position: unknown version {state.get('version')!r}")
        if state["world_size"] != self.world_size:
            raise PositionMismatch(
                f"data position: the checkpoint was written by {state['world_size']} data-parallel ranks and this "
                f"run has {self.world_size}; each rank's share depends on the world size, so resuming with "
                f"another one would repeat and skip samples. Resume with {state['world_size']} ranks, or start "
                "a new run (a fresh output prefix)."
            )
        if state["sequences"] != self.total or state["seed"] != self.seed:
            raise PositionMismatch(
                f"data position: the checkpoint read {state['sequences']} samples with seed {state['seed']}, "
                f"this run has {self.total} with seed {self.seed}; the data or the seed changed"
            )
        return StreamPosition(int(state["epoch"]), int(state["offset"]))
