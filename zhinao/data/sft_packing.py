"""Packing SFT examples into fixed-length rows (pure: lists and numpy in, numpy out).

The report packs naively into 4K (whole examples, greedily, one causal mask over the row) and
found masking documents apart with varlen flash attention *worse*. Both are here so users can
compare: `naive` keeps one position range and full causal attention across a row; `document`
restarts position ids at each example and confines attention to it: varlen flash attention
(transformers detects the restarts in `position_ids`) on GPU, an explicit block-causal mask on
SDPA/eager.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zhinao.chat import IGNORE_INDEX

PAD_DOC = -1
"""doc_ids value of padding positions."""


@dataclass
class Packed:
    input_ids: np.ndarray
    labels: np.ndarray
    doc_ids: np.ndarray
    """Index of the example inside its row at every position (PAD_DOC on padding), (N, L)."""

    skipped: int
    """Examples longer than the row, dropped (as the reference does) rather than truncated."""

    def __len__(self) -> int:
        return len(self.input_ids)

    def position_ids(self, mode: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Position ids of `rows` (all rows when None): computed for those rows only, so a
        micro-batch costs O(micro-batch), not O(dataset)."""
        return position_ids(self.doc_ids if rows is None else self.doc_ids[rows], mode)


def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], *, max_len: int, pad_id: int) -> Packed:
    """Greedy first-fit in order: append an example to the current row while it fits, else start a new row.

    `examples` are (input_ids, labels) pairs; rows are right-padded with `pad_id` (label IGNORE_INDEX).
    """
    rows: list[list[tuple[Sequence[int], Sequence[int]]]] = []
    used = max_len + 1
    skipped = 0
    for ids, labels in examples:
        if len(ids) != len(labels):
            raise ValueError("input_ids and labels differ in length")
        if len(ids) > max_len or not len(ids):
            skipped += 1
            continue
        if used + len(ids) > max_len:
            rows.append([])
            used = 0
        rows[-1].append((ids, labels))
        used += len(ids)
    n = len(rows)
    input_ids = np.full((n, max_len), pad_id, dtype=np.int64)
    out_labels = np.full((n, max_len), IGNORE_INDEX, dtype=np.int64)
    doc_ids = np.full((n, max_len), PAD_DOC, dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for d, (ids, labels) in enumerate(row):
            input_ids[r, at : at + len(ids)] = ids
            out_labels[r, at : at + len(ids)] = labels
            doc_ids[r, at : at + len(ids)] = d
            at += len(ids)
    return Packed(input_ids, out_labels, doc_ids, skipped)


def position_ids(doc_ids: np.ndarray, mode: str) -> np.ndarray:
    """`naive`: 0..L-1 along the row; `document`: 0.. restarting at each example (padding continues
    counting from the last example, so it never looks like the start of a new document)."""
    n, length = doc_ids.shape
    base = np.broadcast_to(np.arange(length, dtype=np.int64), (n, length)).copy()
    if mode == "naive":
        return base
    if mode != "document":
        raise ValueError(f"unknown packing mode {mode!r}")
    starts = np.zeros_like(base)
    for r in range(n):
        row = doc_ids[r]
        boundary = np.flatnonzero((row[1:] != row[:-1]) & (row[1:] != PAD_DOC)) + 1
        start = np.zeros(length, dtype=np.int64)
        start[boundary] = boundary
        starts[r] = np.maximum.accumulate(start)
    return base - starts


def block_causal_mask(doc_ids: np.ndarray) -> np.ndarray:
    """(N, 1, L, L) bool, True where query i may attend key j: j <= i within the same example.

    A padding position attends only itself, so no softmax row is empty (no NaN on SDPA).
    """
    length = doc_ids.shape[1]
    causal = np.tril(np.ones((length, length), dtype=bool))
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    real = (doc_ids != PAD_DOC)[:, None, :]
    allowed = causal[None] & same & real
    pad = doc_ids == PAD_DOC
    idx = np.arange(length)
    allowed[:, idx, idx] |= pad
    return allowed[:, None]


def cu_seqlens(doc_ids_row: np.ndarray) -> np.ndarray:
    """Cumulative example lengths of one row (flash-attn varlen's `cu_seqlens`), padding excluded."""
    real = doc_ids_row[doc_ids_row != PAD_DOC]
    if not len(real):
        return np.zeros(1, dtype=np.int32)
    lengths = np.bincount(real)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
