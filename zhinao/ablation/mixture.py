"""Streaming pieces of the recipe/base mixing: which documents a run takes, in what order, written in parts.

A corpus is never held in memory: a document is read, measured or written, and dropped. What stays
is per document a token length, an order key and a copy count (16 bytes), plus their sort order
while the selection is made (8 bytes per document).
"""

import hashlib
import json
from collections.abc import Iterable, Iterator

import numpy as np

from zhinao.data.packing import TOKEN_DTYPE
from zhinao.storage import ObjectStore

PART_BYTES = 64 * 2**20
"""A part file of a written document stream is closed at this size (a bounded write buffer)."""
TOKENIZE_BATCH = 512
"""Documents per call of the Rust batch encoder."""


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def measure(tokenizer, records: Iterable[dict], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(token length, order key) of each document in stream order: its text's tokens plus <eod>, and
    a seeded hash of its text, so the order a selection takes documents in is the same however
    the documents are laid out in files (a data stage of 1 or 8 ranks)."""
    lengths, keys = [], []
    for batch in batched(records, TOKENIZE_BATCH):
        texts = [r["text"] for r in batch]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths.append(np.fromiter((len(i) + 1 for i in ids), dtype=np.int32, count=len(ids)))
        keys.append(np.fromiter((text_key(t, seed) for t in texts), dtype=np.uint64, count=len(texts)))
    if not lengths:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.uint64)
    return np.concatenate(lengths), np.concatenate(keys)


def text_key(text: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest(), "big")


def copies(lengths: np.ndarray, keys: np.ndarray, budget: int) -> tuple[np.ndarray, int, int]:
    """How often each document is taken to reach `budget` tokens: once per full pass over the data,
    then in the order of their keys until the budget is reached (the last pass is partial).
    Returns (copies per document, tokens taken, passes)."""
    counts = np.zeros(len(lengths), dtype=np.int32)
    total = int(lengths.sum())
    if total == 0 or budget <= 0:
        return counts, 0, 0
    full = (budget - 1) // total
    order = np.argsort(keys, kind="stable")
    taken = np.cumsum(lengths[order], dtype=np.int64)
    last = int(np.searchsorted(taken, budget - full * total))  # the first position that reaches the budget
    counts += full
    counts[order[: last + 1]] += 1
    return counts, full * total + int(taken[last]), full + 1


def repeat(stream, counts: np.ndarray) -> Iterator[tuple[int, dict]]:
    """The documents of `stream()` (a fresh iterator each call) with their copies, each with its
    position in the stream: copy k of every document in the k-th read of the stream, so copies of a
    document are a pass apart."""
    for k in range(int(counts.max(initial=0))):
        for i, record in enumerate(stream()):
            if counts[i] > k:
                yield i, record


def interleave(a: Iterator, n_a: int, b: Iterator, n_b: int, rng: np.random.Generator) -> Iterator:
    """A uniformly random interleaving of two streams of n_a and n_b items (each keeps its own order)."""
    while n_a or n_b:
        if rng.random() * (n_a + n_b) < n_a:
            n_a -= 1
            yield next(a)
        else:
            n_b -= 1
            yield next(b)


def part_key(prefix: str, n: int) -> str:
    return f"{prefix}/part-{n:05d}.jsonl"


def write_parts(store: ObjectStore, prefix: str, records: Iterable[dict]) -> list[int]:
    """`<prefix>/part-NNNNN.jsonl` files of at most about PART_BYTES each; returns the documents in each."""
    buf: list[bytes] = []
    size = 0
    counts: list[int] = []

    def flush() -> None:
        nonlocal buf, size
        store.put_bytes(part_key(prefix, len(counts)), b"".join(buf))
        counts.append(len(buf))
        buf, size = [], 0

    for record in records:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        buf.append(line)
        size += len(line)
        if size >= PART_BYTES:
            flush()
    if buf or not counts:
        flush()
    return counts


def sample_rows(rows: Iterable[np.ndarray], k: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform random sample of k rows of a stream (all when it has fewer), in stream order:
    reservoir sampling, so memory holds k rows whatever the stream's length."""
    kept: list[tuple[int, np.ndarray]] = []
    for i, row in enumerate(rows):
        if len(kept) < k:
            kept.append((i, row))
        else:
            j = int(rng.integers(0, i + 1))
            if j < k:
                kept[j] = (i, row)
    kept.sort(key=lambda item: item[0])
    return np.stack([row for _, row in kept]) if kept else np.zeros((0, 0), dtype=TOKEN_DTYPE)
