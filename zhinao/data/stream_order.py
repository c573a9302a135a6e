"""Which sample a rank reads next: a pure function of the seed and a position of a few numbers.

Per epoch, the shards are put in a seeded random order and viewed as one concatenated array of N
samples. Two orders over it (`stream.elastic`):

* *Contiguous* (default). Rank r of W owns the slice [r*M, (r+1)*M), M = N // W (the last N mod W
  samples of the epoch's order are skipped, as DistributedSampler's drop_last does), so a rank
  downloads only the shards that overlap its slice. The slice is read in windows of `window`
  samples, each in a seeded random order. The position is (epoch, offset) within the slice, which
  depends on W: another world size cannot resume it.
* *Elastic*. One global stream over all epochs: the epoch's array read in windows of `window`
  samples, each window in a seeded random order that does not depend on W, and rank r of W takes
  global samples base + r, base + r + W, ... Ranks read in lockstep, so what a checkpoint covers is
  exactly the global prefix [0, sample), and a run with any world size continues from `sample`: no
  sample repeated or skipped, none dropped at epoch ends. The price: every rank reads a share of
  every window, so every rank downloads every shard (memory and disk stay bounded the same way).

Memory: the shard counts plus one window's permutation, whatever N is.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

STATE_VERSION = 1
CONTIGUOUS, ELASTIC = "contiguous", "elastic"


class PositionMismatch(ValueError):
    """A saved data position does not belong to this run's data, seed or world size."""


@dataclass
class StreamPosition:
    """The next sample of this rank: `offset` within its share of `epoch` (the same on every rank);
    in the elastic order, the count epoch * per_rank + offset of samples it read since global `base`."""

    epoch: int = 0
    offset: int = 0
    base: int = 0

    def advance(self, n: int, per_epoch: int) -> None:
        self.epoch, self.offset = divmod(self.epoch * per_epoch + self.offset + n, per_epoch)


class StreamOrder:
    def __init__(self, counts: list[int], *, seed: int, rank: int, world_size: int, window: int, elastic: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.total = int(self.counts.sum())
        self.per_rank = self.total // world_size
        if self.per_rank == 0:
            raise ValueError(f"the shards hold {self.total} samples, fewer than the {world_size} ranks")
        self.seed, self.rank, self.world_size, self.window = seed, rank, world_size, window
        self.mode = ELASTIC if elastic else CONTIGUOUS

    @lru_cache(maxsize=2)  # noqa: B019 (one order per stream, a handful of epochs apart)
    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.counts))
        return order, np.concatenate([[0], np.cumsum(self.counts[order])])

    @lru_cache(maxsize=2)  # noqa: B019
    def _window(self, epoch: int, w: int) -> np.ndarray:
        size = min(self.window, self.per_rank - w * self.window)
        return np.random.default_rng([self.seed, epoch, self.rank, w]).permutation(size)

    @lru_cache(maxsize=2)  # noqa: B019
    def _global_window(self, epoch: int, w: int) -> np.ndarray:
        size = min(self.window, self.total - w * self.window)
        return np.random.default_rng([self.seed, epoch, w, 1 << 32]).permutation(size)

    def _sample(self, epoch: int, g: int) -> tuple[int, int]:
        """(shard index, sample within the shard) of sample g of the epoch's concatenated array."""
        order, starts = self._epoch(epoch)
        i = int(np.searchsorted(starts, g, side="right")) - 1
        return int(order[i]), g - int(starts[i])

    def locate(self, epoch: int, offset: int) -> tuple[int, int]:
        """Contiguous order: (shard index, sample within the shard) of this rank's `offset`-th sample of `epoch`."""
        w, k = divmod(offset, self.window)
        return self._sample(epoch, self.rank * self.per_rank + w * self.window + int(self._window(epoch, w)[k]))

    def locate_global(self, g: int) -> tuple[int, int]:
        """Elastic order: (shard index, sample within the shard) of sample g of the global stream."""
        epoch, i = divmod(g, self.total)
        w, k = divmod(i, self.window)
        return self._sample(epoch, w * self.window + int(self._global_window(epoch, w)[k]))

    def global_sample(self, pos: StreamPosition) -> int:
        """Elastic order: the global sample this rank reads at `pos`."""
        return pos.base + (pos.epoch * self.per_rank + pos.offset) * self.world_size + self.rank

    def at(self, pos: StreamPosition) -> tuple[int, int]:
        """(shard index, sample within the shard) this rank reads at `pos`, in this stream's order."""
        if self.mode == ELASTIC:
            return self.locate_global(self.global_sample(pos))
        return self.locate(pos.epoch, pos.offset)

    def shards_of_window(self, epoch: int, offset: int) -> list[int]:
        """Contiguous order: the shards the window holding `offset` reads, in order (what to have cached)."""
        w = offset // self.window
        lo = self.rank * self.per_rank + w * self.window
        hi = lo + min(self.window, self.per_rank - w * self.window)
        order, starts = self._epoch(epoch)
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        last = int(np.searchsorted(starts, hi - 1, side="right")) - 1
        return [int(s) for s in order[first : last + 1]]

    def state(self, pos: StreamPosition) -> dict:
        state = {"version": STATE_VERSION, "seed": self.seed, "world_size": self.world_size, "sequences": self.total}
        if self.mode == ELASTIC:
            sample = self.global_sample(pos) - self.rank  # what every rank has read: the prefix [0, sample)
            return {**state, "order": ELASTIC, "sample": sample, "epoch": sample // self.total}
        return {**state, "epoch": pos.epoch, "offset": pos.offset}

    def position(self, state: dict) -> StreamPosition:
        """The position a checkpoint saved, or PositionMismatch saying why it does not apply here."""
        if state.get("version") != STATE_VERSION:
            raise PositionMismatch(f"data position: unknown version {state.get('version')!r}")
        if state["sequences"] != self.total or state["seed"] != self.seed:
            raise PositionMismatch(
                f"data position: the checkpoint read {state['sequences']} samples with seed {state['seed']}, "
                f"this run has {self.total} with seed {self.seed}; the data or the seed changed"
            )
        saved = state.get("order", CONTIGUOUS)
        if saved != self.mode:
            raise PositionMismatch(
                f"data position: the checkpoint was written with the {saved} stream order and this run reads the "
                f"{self.mode} one (stream.elastic); resume with the setting it was written with"
            )
        if self.mode == ELASTIC:
            return StreamPosition(base=int(state["sample"]))
        if state["world_size"] != self.world_size:
            raise PositionMismatch(
                f"data position: the checkpoint was written by {state['world_size']} data-parallel ranks and this "
                f"run has {self.world_size}; each rank's share depends on the world size, so resuming with "
                f"another one would repeat and skip samples. Resume with {state['world_size']} ranks, or start "
                "a new run (a fresh output prefix) with stream.elastic, whose positions resume at any world size."
            )
        return StreamPosition(int(state["epoch"]), int(state["offset"]))
