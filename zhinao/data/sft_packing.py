"""Packing SFT examples into fixed-length rows (pure: lists and numpy in, numpy out).

The report packs naively into 4K (whole examples, greedily, one causal mask over the row) and
found masking documents apart with varlen flash attention *worse*. Both are here so users can
compare: `naive` keeps one position range and full causal attention across a row; `document`
restarts position ids at each example and confines attention to it: on flash attention the
micro-batch is flattened into one row with explicit example boundaries (`flatten_varlen`: the varlen
kernel's `cu_seqlens`), on SDPA/eager each row gets a block-causal mask. Boundaries are passed, not
left to transformers to infer from `position_ids`: it only does that for a batch of one row.
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


class RowPacker:
    """Greedy first-fit in order, one example at a time: append an example to the current row while
    it fits, else start a new row. Holds one row; examples longer than the row are skipped."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.row: list[tuple[Sequence[int], Sequence[int]]] = []
        self.used = 0
        self.skipped = 0

    def add(self, ids: Sequence[int], labels: Sequence[int]) -> list | None:
        """Appends one (input_ids, labels) example; returns the row it closed, if it started a new one."""
        if len(ids) != len(labels):
            raise ValueError("input_ids and labels differ in length")
        if len(ids) > self.max_len or not len(ids):
            self.skipped += 1
            return None
        closed = None
        if self.used + len(ids) > self.max_len:
            closed = self.finish()
        self.row.append((ids, labels))
        self.used += len(ids)
        return closed

    def finish(self) -> list | None:
        row, self.row, self.used = self.row, [], 0
        return row or None


def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], *, max_len: int, pad_id: int) -> Packed:
    """All `examples` ((input_ids, labels) pairs) packed greedily in order (`RowPacker`)."""
    packer = RowPacker(max_len)
    rows = [row for ids, labels in examples if (row := packer.add(ids, labels))]
    if tail := packer.finish():
        rows.append(tail)
    packed = pack_rows(rows, max_len=max_len, pad_id=pad_id)
    packed.skipped = packer.skipped
    return packed


def pack_rows(rows: Sequence[Sequence[tuple[Sequence[int], Sequence[int]]]], *, max_len: int, pad_id: int) -> Packed:
    """Each row's examples side by side in one row of `max_len`, right-padded with `pad_id` (label
    IGNORE_INDEX); the rows must fit (RowPacker makes them)."""
    n = len(rows)
    input_ids = np.full((n, max_len), pad_id, dtype=np.int64)
    out_labels = np.full((n, max_len), IGNORE_INDEX, dtype=np.int64)
    doc_ids = np.full((n, max_len), PAD_DOC, dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for d, (ids, labels) in enumerate(row):
            if at + len(ids) > max_len:
                raise ValueError(f"row {r} holds more than {max_len} tokens")
            input_ids[r, at : at + len(ids)] = ids
            out_labels[r, at : at + len(ids)] = labels
            doc_ids[r, at : at + len(ids)] = d
            at += len(ids)
    return Packed(input_ids, out_labels, doc_ids, 0)


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


@dataclass
class Varlen:
    """A micro-batch flattened into one row of B*L tokens for flash attention's varlen kernel, which
    attends only within each segment of `cu_seqlens`: one segment per example, one per padding run."""

    input_ids: np.ndarray
    labels: np.ndarray
    """As the rows', but IGNORE_INDEX at each row's first token: the rows' loss never predicts it (a
    row's first logit has no predecessor), and in one flat row the previous row's last token would."""
    position_ids: np.ndarray
    cu_seqlens: np.ndarray
    """int32 (segments + 1,): where each segment starts in the flat row, then B*L."""
    max_seqlen: int


def flatten_varlen(input_ids: np.ndarray, labels: np.ndarray, doc_ids: np.ndarray) -> Varlen:
    """The (B, L) rows of a `document`-packed micro-batch as one (1, B*L) varlen row."""
    n, length = doc_ids.shape
    starts = np.ones((n, length), dtype=bool)  # a segment starts at every row start and every doc_id change
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    bounds = np.concatenate([np.flatnonzero(starts.reshape(-1)), [n * length]]).astype(np.int32)
    flat_labels = labels.copy()
    flat_labels[:, 0] = IGNORE_INDEX
    return Varlen(
        input_ids=input_ids.reshape(1, -1),
        labels=flat_labels.reshape(1, -1),
        position_ids=position_ids(doc_ids, "document").reshape(1, -1),
        cu_seqlens=bounds,
        max_seqlen=int(np.diff(bounds).max()),
    )
