"""Pack tokenized documents into fixed-length training sequences, and sample them deterministically.

As in the report (section 2.4): documents are concatenated within the same source, separated by
<eod>, cut to the sequence length, and shuffled by the trainer. Pure functions over numpy arrays;
the pretrain stage does the I/O.
"""

from collections.abc import Iterable, Iterator
from functools import lru_cache

import numpy as np

TOKEN_DTYPE = np.uint32


def iter_packed(token_lists: Iterable[list[int]], *, seq_len: int, eod_id: int) -> Iterator[np.ndarray]:
    """Rows of seq_len tokens as they fill: the documents concatenated, each followed by <eod>; the
    incomplete tail is dropped. Memory: one row plus one document."""
    buf: list[int] = []
    for ids in token_lists:
        buf.extend(ids)
        buf.append(eod_id)
        while len(buf) >= seq_len:
            yield np.asarray(buf[:seq_len], dtype=TOKEN_DTYPE)
            del buf[:seq_len]


def pack_source(token_lists: Iterable[list[int]], *, seq_len: int, eod_id: int) -> np.ndarray:
    """(n, seq_len) sequences from one source's documents; the incomplete tail is dropped."""
    rows = list(iter_packed(token_lists, seq_len=seq_len, eod_id=eod_id))
    return np.stack(rows) if rows else np.zeros((0, seq_len), dtype=TOKEN_DTYPE)


@lru_cache(maxsize=4)
def epoch_permutation(n_sequences: int, *, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_sequences)


def batch_indices(
    *,
    n_sequences: int,
    step: int,
    micro_step: int,
    rank: int,
    world_size: int,
    micro_batch: int,
    grad_accum: int,
    seed: int,
) -> np.ndarray:
    """Sequence indices for one rank's micro-batch of optimizer step `step` (0-based).

    A pure function of the position, so a resumed run reads exactly what an uninterrupted one
    would have read: the data position in a checkpoint is just the step number.
    """
    global_batch = micro_batch * world_size * grad_accum
    first = step * global_batch + (micro_step * world_size + rank) * micro_batch
    out = np.empty(micro_batch, dtype=np.int64)
    for i in range(micro_batch):
        pos = first + i
        epoch, offset = divmod(pos, n_sequences)
        out[i] = epoch_permutation(n_sequences, seed=seed, epoch=epoch)[offset]
    return out
