"""Cross-shard state through object storage: who owns what, local spools, exchange and barrier.

Every cross-shard step follows one pattern: each rank writes compact records (hashes, ids) for
rank d under `_work/<run>/<tag>/to-d/from-r.npy`, waits at a barrier, then reads what every rank
wrote for it. Records are routed by hash, so each rank merges 1/world_size of the corpus' keys,
and adding pods shrinks every rank's share.
"""

import io
import logging
import os
import tempfile
import time
from array import array
from pathlib import Path

import numpy as np

from zhinao.distributed import DistEnv
from zhinao.storage import ObjectStore

log = logging.getLogger(__name__)

_U64 = np.uint64


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (a copy): a deterministic pseudo-random order for tie-free choices."""
    x = np.asarray(x, dtype=_U64).copy()
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


class Sharding:
    """Which rank reads which input lines, and so owns which global doc ids (gids).

    With at least as many files as ranks, rank r reads a contiguous range of the sorted files.
    With fewer, every rank reads every file and keeps the lines with line % world_size == rank.
    Either way the gids, and hence every keep/drop decision, do not depend on the world size.
    """

    def __init__(self, n_files: int, world_size: int):
        self.n_files, self.world_size = n_files, world_size
        self.by_file = n_files >= world_size
        self._starts = np.array([DistEnv(r, world_size, 0).shard(n_files).start for r in range(world_size)])

    def files_of(self, rank: int) -> range:
        return DistEnv(rank, self.world_size, 0).shard(self.n_files) if self.by_file else range(self.n_files)

    def owns_line(self, rank: int, line_no: int) -> bool:
        return self.by_file or line_no % self.world_size == rank

    def owner(self, gids: np.ndarray) -> np.ndarray:
        gids = np.asarray(gids, dtype=_U64)
        if self.world_size == 1:
            return np.zeros(gids.shape, dtype=np.int64)
        if self.by_file:
            return np.searchsorted(self._starts, (gids >> _U64(32)).astype(np.int64), side="right") - 1
        return ((gids & _U64(0xFFFFFFFF)) % _U64(self.world_size)).astype(np.int64)


class Spool:
    """Records bound for each rank, appended to local files so that memory stays bounded."""

    def __init__(self, dtype: np.dtype, world_size: int, directory: Path, name: str, *, buffer_records: int = 65536):
        self.dtype, self.world_size = np.dtype(dtype), world_size
        self.paths = [directory / f"{name}-to-{d:05d}.bin" for d in range(world_size)]
        for p in self.paths:
            p.write_bytes(b"")
        self._buf: list[list[np.ndarray]] = [[] for _ in range(world_size)]
        self._n = 0
        self._limit = buffer_records

    def add(self, records: np.ndarray, dest: np.ndarray) -> None:
        if self.world_size == 1:
            self._buf[0].append(records)
        else:
            order = np.argsort(dest, kind="stable")
            bounds = np.searchsorted(dest[order], np.arange(self.world_size + 1))
            for d in range(self.world_size):
                if bounds[d + 1] > bounds[d]:
                    self._buf[d].append(records[order[bounds[d] : bounds[d + 1]]])
        self._n += len(records)
        if self._n >= self._limit:
            self.flush()

    def flush(self) -> None:
        for d, chunks in enumerate(self._buf):
            if chunks:
                with open(self.paths[d], "ab") as f:
                    for c in chunks:
                        f.write(np.ascontiguousarray(c, dtype=self.dtype).tobytes())
        self._buf = [[] for _ in range(self.world_size)]
        self._n = 0

    def load(self, dest: int) -> np.ndarray:
        self.flush()
        return np.fromfile(self.paths[dest], dtype=self.dtype)

    def parts(self) -> list[tuple[Path, np.dtype]]:
        """What `Comm.exchange` sends: one file per destination rank."""
        self.flush()
        return [(p, self.dtype) for p in self.paths]

    def remove(self) -> None:
        for p in self.paths:
            p.unlink(missing_ok=True)


class Columns:
    """Growable unsigned 64-bit columns (8 bytes per value, unlike a list of ints)."""

    def __init__(self, *names: str):
        self.cols = {n: array("Q") for n in names}

    def append(self, *values: int) -> None:
        for col, v in zip(self.cols.values(), values):
            col.append(v)

    def __len__(self) -> int:
        return len(next(iter(self.cols.values())))

    def numpy(self, name: str) -> np.ndarray:
        return np.frombuffer(self.cols[name], dtype=_U64) if len(self) else np.zeros(0, dtype=_U64)


def _to_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class Comm:
    """Exchange and barrier for `world_size` ranks sharing `store` (the run's `_work/<run>/`)."""

    def __init__(
        self, store: ObjectStore | None, rank: int, world_size: int, *, timeout_s: float = 3600.0, poll_s: float = 1.0
    ):
        if world_size > 1 and store is None:
            raise ValueError("more than one rank needs a store to exchange through")
        self.store, self.rank, self.world_size, self.timeout_s, self.poll_s = store, rank, world_size, timeout_s, poll_s

    def barrier(self, tag: str) -> None:
        if self.world_size == 1:
            return
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
                return
        except ImportError:
            pass
        self.store.put_bytes(f"{tag}/done-{self.rank:05d}", b"")
        deadline = time.monotonic() + self.timeout_s
        delay = 0.02
        while len(self.store.list(f"{tag}/done-")) < self.world_size:
            if time.monotonic() > deadline:
                seen = self.store.list(f"{tag}/done-")
                raise TimeoutError(f"barrier {tag!r}: {len(seen)}/{self.world_size} ranks after {self.timeout_s:.0f}s")
            time.sleep(delay)
            delay = min(self.poll_s, delay * 1.5)

    def exchange(self, tag: str, parts: list["np.ndarray | tuple[Path, np.dtype]"]) -> list[np.ndarray]:
        """parts[d] goes to rank d (an array, or a (local file, dtype) pair of raw records, loaded
        one at a time); returns what each rank sent here, in rank order."""
        if len(parts) != self.world_size:
            raise ValueError(f"exchange {tag!r}: {len(parts)} parts for {self.world_size} ranks")
        if self.world_size == 1:
            return [_materialise(parts[0])]
        for d, part in enumerate(parts):
            if d == self.rank:
                continue
            key = f"{tag}/to-{d:05d}/from-{self.rank:05d}.npy"
            self.store.put_bytes(key, _to_npy(_materialise(part)))
        self.barrier(tag)
        out = []
        for s in range(self.world_size):
            if s == self.rank:
                out.append(_materialise(parts[s]))
            else:
                out.append(_from_npy(self.store.get_bytes(f"{tag}/to-{self.rank:05d}/from-{s:05d}.npy")))
        return out

    def route(self, tag: str, records: np.ndarray, dest: np.ndarray) -> np.ndarray:
        """Send each record to rank dest[i]; returns the records sent here by all ranks."""
        if self.world_size == 1:
            return records
        order = np.argsort(dest, kind="stable")
        bounds = np.searchsorted(np.asarray(dest)[order], np.arange(self.world_size + 1))
        parts = [records[order[bounds[d] : bounds[d + 1]]] for d in range(self.world_size)]
        got = self.exchange(tag, parts)
        return np.concatenate(got) if got else records[:0]

    def allgather(self, tag: str, arr: np.ndarray) -> list[np.ndarray]:
        return self.exchange(tag, [arr] * self.world_size)


def _materialise(part: np.ndarray | tuple[Path, np.dtype]) -> np.ndarray:
    if isinstance(part, tuple):
        path, dtype = part
        return np.fromfile(path, dtype=dtype)
    return part


def spool_dir(base: str | None) -> Path:
    d = Path(tempfile.mkdtemp(prefix="zhinao-data-", dir=base))
    log.debug("spill directory %s (pid %d)", d, os.getpid())
    return d
