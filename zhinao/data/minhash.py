"""Vectorised MinHash signatures and LSH band keys over a batch of documents.

Everything after `str.lower()` is numpy over the whole batch, so the per-document Python cost is a
few list operations (measured in bench/data_pipeline.py against datasketch and datatrove):

1. The batch is one codepoint array (bytes for ASCII, UTF-16 code units for BMP text, UTF-32 only
   outside the BMP); a lookup table classes each codepoint as separator, word character or CJK
   character. Tokens are runs of word characters, or single CJK characters.
2. Token hashes are polynomial hashes mod 2^64 taken from one prefix sum: with Q = P^-1 mod 2^64,
   hash(s..e) = P^(e-1) * (C[e] - C[s]) where C = cumsum(cp[j] * Q^j). Deterministic in every
   process (unlike Python's salted `hash`), which cross-shard LSH needs.
3. A shingle is n consecutive tokens of one document, hashed as sum(tok[i+k] * R_k) then mixed:
   n multiply-adds over every window of the batch, then the windows that leave their document are
   masked out.
4. Permutation i maps the high 32 bits x of a shingle hash to a_i * x + b_i mod 2^32 (a_i odd: a
   bijection; the mixed hash already carries the randomness, so 32-bit arithmetic suffices and runs
   twice as wide as 64-bit). The permutations are rows and the shingles columns, so each document's
   minimum is a reduction over a contiguous run: about 5x faster than the 64-bit, shingle-major
   layout this replaced (bench/data_pipeline.py). A few permutations at a time span the whole batch,
   so one `reduceat` writes their row of every signature. The signature is the minimum per document.
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
_BLOCK = 1 << 18  # permutation x shingle values per signature step (1 MiB): 2^14-2^20 measured alike, 2^22 1.5x slower
SENTINEL = np.uint32(0xFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: spreads polynomial-hash structure over all 64 bits."""
    x ^= x >> _U64(30)
    x *= _MIX1
    x ^= x >> _U64(27)
    x *= _MIX2
    x ^= x >> _U64(31)
    return x


_SURROGATE = 3  # a UTF-16 code unit of a character outside the BMP (see _codepoints)


@lru_cache(maxsize=1)
def _char_classes() -> np.ndarray:
    """0 separator, 1 word character, 2 CJK character, for every BMP codepoint; 3 for the surrogate
    code units, which only ever come from the UTF-16 encoding of a character outside the BMP."""
    table = np.zeros(0x10000, dtype=np.uint8)
    for cp in range(0x10000):
        ch = chr(cp)
        if ch.isalnum():
            table[cp] = 1
    for lo, hi in _cjk_ranges():
        if lo < 0x10000:
            table[lo : min(hi, 0xFFFF) + 1] = 2
    table[0xD800:0xE000] = _SURROGATE
    return table


def _cjk_ranges() -> list[tuple[int, int]]:
    chars = list(CJK)
    return [(ord(chars[i]), ord(chars[i + 2])) for i in range(0, len(chars), 3)]


def _codepoints(joined: str) -> tuple[np.ndarray, np.ndarray]:
    """(codepoints, their classes) in the narrowest array that holds them: bytes for ASCII, UTF-16
    code units for BMP text (half of UTF-32's bytes to encode and read), UTF-32 only when a
    character lies outside the BMP."""
    table = _char_classes()
    if joined.isascii():
        cp = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        return cp, np.take(table, cp)
    cp = np.frombuffer(joined.encode("utf-16-le"), dtype=np.uint16)
    cls = np.take(table, cp)  # np.take: about half the time of fancy indexing here
    if cls.max() != _SURROGATE:
        return cp, cls
    cp = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    bmp = cp < 0x10000
    cls = np.zeros(cp.size, dtype=np.uint8)
    cls[bmp] = table[cp[bmp]]
    cls[~bmp & (cp >= 0x20000) & (cp <= 0x2FA1F)] = 2
    return cp, cls


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
    np.cumsum(np.fromiter(map(len, lowered), dtype=np.int64, count=len(lowered)) + 1, out=starts_cp[1:])
    # "\0" between documents is a separator, so no token spans two documents.
    cp, cls = _codepoints("\0".join(lowered))
    if cp.size == 0:
        return np.zeros(0, dtype=_U64), np.zeros(len(texts), dtype=np.int64)
    # Where a run of word characters starts or ends ("\0" pads both ends): starts and ends alternate.
    word = np.zeros(cp.size + 2, dtype=bool)
    np.equal(cls, 1, out=word[1:-1])
    bounds = np.flatnonzero(word[1:] != word[:-1])
    tok_start, tok_end = bounds[0::2], bounds[1::2]
    if cls.max() == 2:  # CJK characters are tokens of one character each
        cjk = np.flatnonzero(cls == 2)
        tok_start, tok_end = np.union1d(tok_start, cjk), np.union1d(tok_end, cjk + 1)

    ppow, qpow = _POWERS.upto(cp.size)
    prefix = np.empty(cp.size + 1, dtype=_U64)
    prefix[0] = 0
    np.multiply(cp, qpow, out=prefix[1:], dtype=_U64)
    np.cumsum(prefix[1:], out=prefix[1:])
    h = np.take(prefix, tok_end)
    h -= np.take(prefix, tok_start)
    h *= np.take(ppow, tok_end - 1)
    # Length in the low bits separates "ab" from a hash-equal string of another length.
    h += (tok_end - tok_start).astype(_U64)
    _mix(h)
    # Tokens per document: one binary search per document boundary, not one per token.
    return h, np.diff(np.searchsorted(tok_start, starts_cp)).astype(np.int64)


@lru_cache(maxsize=8)
def _shingle_weights(n: int) -> np.ndarray:
    return np.random.default_rng(0x5EED + n).integers(1, 1 << 63, size=n, dtype=np.uint64) * _U64(2) + _U64(1)


def shingle_hashes(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes of every shingle of the batch, shingles per document). A document with fewer than
    `ngram` tokens (but at least one) has one shingle made of all its tokens."""
    tok, per_doc = token_hashes(texts)
    weights = _shingle_weights(ngram)
    doc_start = np.cumsum(per_doc) - per_doc
    short = (per_doc > 0) & (per_doc < ngram)
    n_sh = np.where(short, 1, np.maximum(per_doc - ngram + 1, 0))
    total = tok.size - ngram + 1
    if total > 0:
        # Every window of the batch at once, then those that lie inside one document.
        windows = np.multiply(tok[:total], weights[0])
        term = np.empty_like(windows)
        for k in range(1, ngram):
            windows += np.multiply(tok[k : k + total], weights[k], out=term)
        inside = np.ones(total, dtype=bool)
        ends = doc_start + per_doc
        for k in range(1, ngram):  # a window starting in a document's last ngram-1 tokens leaves it
            last = ends - k
            inside[last[(last >= doc_start) & (last < total)]] = False
        windows = windows[inside]
    else:
        windows = np.zeros(0, dtype=_U64)
    if not short.any():
        return _mix(windows), n_sh
    out = np.empty(int(n_sh.sum()), dtype=_U64)
    full = np.ones(out.size, dtype=bool)
    full[(np.cumsum(n_sh) - n_sh)[short]] = False  # a short document's one shingle, in document order
    out[full] = windows
    out[~full] = [np.sum(tok[s : s + m] * weights[:m], dtype=_U64) for s, m in zip(doc_start[short], per_doc[short])]
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
        # As many permutations at a time as fit a buffer of about 1 MiB (at least one), over the
        # whole batch; a document's shingles are contiguous, so its minimum is one reduceat.
        rows = max(1, _BLOCK // x.size)
        buf = np.empty((rows, x.size), dtype=np.uint32)
        for lo in range(0, self.num_perm, rows):
            block = buf[: min(rows, self.num_perm - lo)]
            np.multiply(self.a[lo : lo + rows, None], x, out=block)
            block += self.b[lo : lo + rows, None]
            if docs.size == n_docs:
                np.minimum.reduceat(block, starts, axis=1, out=sig_t[lo : lo + rows])
            else:
                sig_t[lo : lo + rows, docs] = np.minimum.reduceat(block, starts, axis=1)
        return sig_t.T.copy()

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: one hash per band of `rows` signature values."""
        n = sig.shape[0]
        part = sig[:, : self.bands * self.rows].reshape(n, self.bands, self.rows).astype(_U64)
        part *= self._band_w
        keys = part.sum(axis=2, dtype=_U64)
        keys += np.arange(self.bands, dtype=_U64)
        return _mix(keys)


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
