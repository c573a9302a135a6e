"""Vectorised MinHash signatures and LSH band keys over a batch of documents.

Everything after `str.lower()` is numpy over the whole batch, so the per-document Python cost is a
few list operations (measured in bench/data_pipeline.py against datasketch and datatrove):

1. The batch is one UTF-32 codepoint array; a lookup table classes each codepoint as separator,
   word character or CJK character. Tokens are runs of word characters, or single CJK characters.
2. Token hashes are polynomial hashes mod 2^64 taken from one prefix sum: with Q = P^-1 mod 2^64,
   hash(s..e) = P^(e-1) * (C[e] - C[s]) where C = cumsum(cp[j] * Q^j). Deterministic in every
   process (unlike Python's salted `hash`), which cross-shard LSH needs.
3. A shingle is n consecutive tokens of one document, hashed as sum(tok[i+k] * R_k) then mixed.
4. Permutation i maps the high 32 bits x of a shingle hash to a_i * x + b_i mod 2^32 (a_i odd: a
   bijection; the mixed hash already carries the randomness, so 32-bit arithmetic suffices and runs
   twice as wide as 64-bit). The permutations are rows and the shingles columns, so each document's
   minimum is a reduction over a contiguous run: about 5x faster than the 64-bit, shingle-major
   layout this replaced (bench/data_pipeline.py). The signature is the minimum per document.
5. `set_elements`, `grouped_sets` and `exact_jaccard` give the exact Jaccard of shingle sets that
   confirms LSH candidates (lsh.py), computed for candidate pairs only.
"""

from functools import lru_cache

import numpy as np

from zhinao.data.text import CJK

_U64 = np.uint64
_P = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64
_Q = pow(_P, -1, 1 << 64)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_CHUNK_COLS = 8192  # shingles per permutation block (128 x 8192 x 4 B = 4 MiB): 4096 and 16384 measured slower
SENTINEL = np.uint32(0xFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: spreads polynomial-hash structure over all 64 bits."""
    x ^= x >> _U64(30)
    x *= _MIX1
    x ^= x >> _U64(27)
    x *= _MIX2
    x ^= x >> _U64(31)
    return x


@lru_cache(maxsize=1)
def _char_classes() -> np.ndarray:
    """0 separator, 1 word character, 2 CJK character, for every BMP codepoint."""
    table = np.zeros(0x10000, dtype=np.uint8)
    for cp in range(0x10000):
        ch = chr(cp)
        if ch.isalnum():
            table[cp] = 1
    for lo, hi in _cjk_ranges():
        if lo < 0x10000:
            table[lo : min(hi, 0xFFFF) + 1] = 2
    return table


def _cjk_ranges() -> list[tuple[int, int]]:
    chars = list(CJK)
    return [(ord(chars[i]), ord(chars[i + 2])) for i in range(0, len(chars), 3)]


class _Powers:
    """P^i and Q^i mod 2^64 for i < n, grown on demand (cumprod wraps mod 2^64 like C)."""

    def __init__(self) -> None:
        self.p = np.ones(1, dtype=_U64)
        self.q = np.ones(1, dtype=_U64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n > len(self.p):
            size = max(n, 2 * len(self.p), 1 << 16)
            self.p, self.q = (self._powers(base, size) for base in (_P, _Q))
        return self.p[:n], self.q[:n]

    @staticmethod
    def _powers(base: int, size: int) -> np.ndarray:
        factors = np.full(size, base, dtype=_U64)
        factors[0] = 1
        return np.cumprod(factors, dtype=_U64)


_POWERS = _Powers()


def token_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes of every token of the batch in order, number of tokens per document)."""
    lowered = [t.lower() for t in texts]
    starts_cp = np.zeros(len(lowered) + 1, dtype=np.int64)
    np.cumsum([len(t) + 1 for t in lowered], out=starts_cp[1:])
    # "\0" between documents is a separator, so no token spans two documents.
    joined = "\0".join(lowered)
    if joined.isascii():  # the same codepoints, a quarter of the bytes to encode, classify and read
        cp = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    else:
        cp = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    if cp.size == 0:
        return np.zeros(0, dtype=_U64), np.zeros(len(texts), dtype=np.int64)
    bmp = cp < 0x10000
    if bmp.all():  # the common case: one table lookup, no masks
        cls = _char_classes()[cp]
    else:
        cls = np.zeros(cp.size, dtype=np.uint8)
        cls[bmp] = _char_classes()[cp[bmp]]
        cls[~bmp & (cp >= 0x20000) & (cp <= 0x2FA1F)] = 2
    # +1 where a run of word characters starts, -1 just past where it ends ("\0" pads both ends).
    edge = np.diff((cls == 1).view(np.int8), prepend=np.int8(0), append=np.int8(0))
    if cls.max() == 2:  # CJK characters are tokens of one character each
        cjk = np.flatnonzero(cls == 2)
        tok_start = np.union1d(np.flatnonzero(edge == 1), cjk)
        tok_end = np.union1d(np.flatnonzero(edge == -1), cjk + 1)
    else:
        tok_start, tok_end = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)

    ppow, qpow = _POWERS.upto(cp.size)
    prefix = np.zeros(cp.size + 1, dtype=_U64)
    np.cumsum(cp.astype(_U64) * qpow, out=prefix[1:])
    h = (prefix[tok_end] - prefix[tok_start]) * ppow[tok_end - 1]
    # Length in the low bits separates "ab" from a hash-equal string of another length.
    h += (tok_end - tok_start).astype(_U64)
    _mix(h)
    # Tokens per document: one binary search per document boundary, not one per token.
    return h, np.diff(np.searchsorted(tok_start, starts_cp)).astype(np.int64)


@lru_cache(maxsize=8)
def _shingle_weights(n: int) -> np.ndarray:
    return np.random.default_rng(0x5EED + n).integers(1, 1 << 63, size=n, dtype=np.uint64) * _U64(2) + _U64(1)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """arange(s, s + n) for every (s, n), concatenated, without a Python loop."""
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + within


def shingle_hashes(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes of every shingle of the batch, shingles per document). A document with fewer than
    `ngram` tokens (but at least one) has one shingle made of all its tokens."""
    tok, per_doc = token_hashes(texts)
    weights = _shingle_weights(ngram)
    doc_start = np.concatenate([[0], np.cumsum(per_doc)[:-1]]).astype(np.int64)
    short = (per_doc > 0) & (per_doc < ngram)
    n_sh = np.where(short, 1, np.maximum(per_doc - ngram + 1, 0))
    out = np.empty(int(n_sh.sum()), dtype=_U64)
    out_start = np.concatenate([[0], np.cumsum(n_sh)[:-1]]).astype(np.int64)

    full_docs = np.flatnonzero(per_doc >= ngram)
    if full_docs.size:
        # Every window of the batch at once; only those inside one document are kept.
        total = tok.size - ngram + 1
        windows = np.zeros(total, dtype=_U64)
        for k in range(ngram):
            windows += tok[k : k + total] * weights[k]
        lengths = n_sh[full_docs]
        out[_ranges(out_start[full_docs], lengths)] = windows[_ranges(doc_start[full_docs], lengths)]
    for d in np.flatnonzero(short):
        s, m = doc_start[d], per_doc[d]
        out[out_start[d]] = np.sum(tok[s : s + m] * weights[:m], dtype=_U64)
    return _mix(out), n_sh


class MinHasher:
    """MinHash signatures (uint32, `num_perm` per document) and LSH band keys."""

    def __init__(self, *, num_perm: int = 128, ngram: int = 5, bands: int = 16, rows: int = 8, seed: int = 42):
        if bands * rows > num_perm:
            raise ValueError(f"bands*rows ({bands}*{rows}) exceeds num_perm ({num_perm})")
        self.num_perm, self.ngram, self.bands, self.rows = num_perm, ngram, bands, rows
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint32)
        self._band_w = rng.integers(0, 1 << 63, size=rows, dtype=np.uint64) * _U64(2) + _U64(1)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32; a document without tokens is all SENTINEL."""
        return self.signatures_of(*shingle_hashes(texts, self.ngram))

    def signatures_of(self, sh: np.ndarray, per_doc: np.ndarray) -> np.ndarray:
        """Signatures from `shingle_hashes`' output (hashes of the batch in document order, counts)."""
        n_docs = len(per_doc)
        sig_t = np.full((self.num_perm, n_docs), SENTINEL, dtype=np.uint32)
        if sh.size == 0:
            return sig_t.T.copy()
        x = (sh >> _U64(32)).astype(np.uint32)
        docs = np.flatnonzero(per_doc)  # documents with shingles, and where their runs start
        starts = (np.cumsum(per_doc) - per_doc)[docs]
        buf = np.empty((self.num_perm, _CHUNK_COLS), dtype=np.uint32)
        for lo in range(0, x.size, _CHUNK_COLS):
            cols = x[lo : lo + _CHUNK_COLS]
            block = buf[:, : cols.size]
            np.multiply(self.a[:, None], cols, out=block)
            block += self.b[:, None]
            # A document's shingles are contiguous: reduce each document's run inside the block.
            first = np.searchsorted(starts, lo, side="right") - 1
            last = np.searchsorted(starts, lo + cols.size, side="left")
            seg = np.maximum(starts[first:last] - lo, 0)
            mins = np.minimum.reduceat(block, seg, axis=1)
            ids = docs[first:last]
            np.minimum(sig_t[:, ids], mins, out=mins)
            sig_t[:, ids] = mins
        return sig_t.T.copy()

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: one hash per band of `rows` signature values."""
        n = sig.shape[0]
        keys = np.empty((n, self.bands), dtype=_U64)
        for j in range(self.bands):
            part = sig[:, j * self.rows : (j + 1) * self.rows].astype(_U64)
            k = (part * self._band_w).sum(axis=1, dtype=_U64) + _U64(j)
            keys[:, j] = _mix(k)
        return keys


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Share of equal signature positions, row by row."""
    return (sig_a == sig_b).mean(axis=-1)


def has_tokens(sig: np.ndarray) -> np.ndarray:
    return sig[:, 0] != SENTINEL


_SET_BITS = 40  # set elements: the top 40 bits of a shingle's mixed hash (see set_elements)
_SET_MASK = _U64((1 << _SET_BITS) - 1)
_MAX_GROUPS = 1 << (64 - _SET_BITS)
PAIR_SHINGLE = np.dtype([("pair", "<i8"), ("h", "<u8")])


def set_elements(sh: np.ndarray) -> np.ndarray:
    """Shingle hashes as elements of the sets whose exact Jaccard confirms LSH candidates: the top
    40 bits. Two different shingles of a pair of 1,000-shingle documents collide with probability
    about 1e-6, far below the Jaccard resolution that matters, and a (group, element) key then fits
    one u64."""
    return sh >> _U64(64 - _SET_BITS)


def grouped_sets(group: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """PAIR_SHINGLE records (group, element), sorted, without repeats inside a group. One u64 sort
    of group << 40 | element: numpy sorts a two-column key several times slower (and np.unique,
    which hashes first, slower still)."""
    out = np.empty(0, dtype=PAIR_SHINGLE)
    for lo in range(0, int(group.max()) + 1 if group.size else 0, _MAX_GROUPS):
        sel = (group >= lo) & (group < lo + _MAX_GROUPS)
        keys = np.sort(((group[sel] - lo).astype(_U64) << _U64(_SET_BITS)) | elements[sel])
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.size else keys
        part = np.empty(len(keys), dtype=PAIR_SHINGLE)
        part["pair"], part["h"] = (keys >> _U64(_SET_BITS)).astype(np.int64) + lo, keys & _SET_MASK
        out = np.concatenate([out, part])
    return out


def exact_jaccard(a: np.ndarray, b: np.ndarray, n_pairs: int) -> np.ndarray:
    """Exact Jaccard of each pair's two sets: `a` and `b` are `grouped_sets` output (sorted by pair,
    then element; no repeats) for each pair's first and second set."""
    size_a = np.bincount(a["pair"], minlength=n_pairs)
    size_b = np.bincount(b["pair"], minlength=n_pairs)
    inter = np.zeros(n_pairs, dtype=np.int64)
    for lo in range(0, n_pairs, _MAX_GROUPS):
        ka, kb = _keys(a, lo), _keys(b, lo)
        if ka.size and kb.size:
            # Both key lists are sorted: a binary search per element of a finds its match in b.
            at = np.minimum(np.searchsorted(kb, ka), kb.size - 1)
            hit = ka[kb[at] == ka]
            inter += np.bincount((hit >> _U64(_SET_BITS)).astype(np.int64) + lo, minlength=n_pairs)[:n_pairs]
    return inter / np.maximum(size_a + size_b - inter, 1)


def _keys(records: np.ndarray, lo: int) -> np.ndarray:
    sel = (records["pair"] >= lo) & (records["pair"] < lo + _MAX_GROUPS)
    return ((records["pair"][sel] - lo).astype(_U64) << _U64(_SET_BITS)) | records["h"][sel]
