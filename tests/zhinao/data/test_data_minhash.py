"""Vectorised MinHash and LSH: determinism, accuracy against exact Jaccard, recall on planted pairs."""

import random
import re
import subprocess
import sys

import numpy as np
import pytest

from zhinao.config.data import MinHashConfig
from zhinao.data.dedup import StepContext
from zhinao.data.exchange import Comm, Sharding
from zhinao.data.io import Doc, make_gid
from zhinao.data.lsh import BAND, PAIR, MinHashDedup, candidate_pairs, components
from zhinao.data.minhash import (
    SENTINEL,
    MinHasher,
    estimated_jaccard,
    exact_jaccard,
    grouped_sets,
    set_elements,
    shingle_hashes,
    token_hashes,
)
from zhinao.data.text import CJK


def _vocab(rng, n=5000):
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(n)]


def _shingles(text, n=5):
    w = text.lower().split()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def test_token_hash_ignores_position_and_case_but_not_content():
    h, per = token_hashes(["Hello world 中文", "x hello  WORLD"])
    assert per.tolist() == [4, 3]
    assert h[0] == h[5] and h[1] == h[6] and h[0] != h[1]
    assert h[2] != h[3]  # one token per CJK character


def test_token_hashes_are_the_same_in_another_process():
    # Cross-shard LSH needs every rank to hash alike (Python's own str hash is salted per process).
    code = "from zhinao.data.minhash import token_hashes; print(int(token_hashes(['deterministic hashing'])[0][0]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == int(token_hashes(["deterministic hashing"])[0][0])


_M64 = (1 << 64) - 1
_CJK_CHAR = re.compile(f"[{CJK}]")


def _ref_mix(x):
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _ref_tokens(text):
    """Lowercased runs of word characters (alphanumeric, in the BMP), and single CJK characters."""
    tokens, run = [], ""
    for ch in text.lower():
        if _CJK_CHAR.fullmatch(ch):
            tokens += [run, ch] if run else [ch]
            run = ""
        elif ord(ch) < 0x10000 and ch.isalnum():
            run += ch
        elif run:
            tokens.append(run)
            run = ""
    return tokens + [run] if run else tokens


def _ref_shingles(text, n=5):
    """The module docstring's definitions, one token and one shingle at a time."""
    hashes = []
    for tok in _ref_tokens(text):
        h = 0
        for ch in tok:
            h = (h * 0x9E3779B97F4A7C15 + ord(ch)) & _M64
        hashes.append(_ref_mix((h + len(tok)) & _M64))
    weights = np.random.default_rng(0x5EED + n).integers(1, 1 << 63, size=n, dtype=np.uint64) * 2 + 1
    windows = [hashes[i : i + n] for i in range(len(hashes) - n + 1)] or ([hashes] if hashes else [])
    return [_ref_mix(sum(int(t) * int(w) for t, w in zip(win, weights)) & _M64) for win in windows]


def _ref_signature(mh, shingles):
    if not shingles:
        return np.full(mh.num_perm, SENTINEL, dtype=np.uint32)
    x = np.array([s >> 32 for s in shingles], dtype=np.uint64)
    a, b = mh.a.astype(np.uint64)[:, None], mh.b.astype(np.uint64)[:, None]
    return ((a * x + b) & 0xFFFFFFFF).min(axis=1).astype(np.uint32)


def _ref_band_keys(mh, sig):
    rows = [[int(v) for v in sig[j * mh.rows : (j + 1) * mh.rows]] for j in range(mh.bands)]
    return [_ref_mix((sum(v * int(w) for v, w in zip(r, mh._band_w)) + j) & _M64) for j, r in enumerate(rows)]


def _batch(rng, alphabet, docs):
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(50)]
    return [" ".join(rng.choice(words) for _ in range(rng.choice([0, 1, 3, 4, 5, 6, 40, 300]))) for _ in range(docs)]


@pytest.mark.parametrize(
    "alphabet",
    [
        "abcXYZ019",  # ASCII: read as bytes
        "abcÄöüßΣσςİǅ½٣Ⅻ-'",  # BMP: UTF-16 code units (İ lowers to two characters, Σ by context)
        "ab中文日本語かな한국",  # CJK characters are tokens of their own
        "ab𠀀𠀁😀𝐀中",  # outside the BMP: UTF-32 (CJK extension B is CJK; other characters separate)
    ],
)
def test_hashes_signatures_and_band_keys_equal_a_plain_reference(alphabet):
    # The vectorised code must give exactly the documented hashes: LSH keys and stored shingle sets
    # are compared across ranks and runs, so any change of a bit changes which documents meet.
    rng = random.Random(alphabet)
    texts = _batch(rng, alphabet, 60) + ["", "...!!!", " ".join(f"w{i}" for i in range(20_000))]
    mh = MinHasher(bands=25, rows=5)
    sh, per = shingle_hashes(texts, 5)
    sig = mh.signatures(texts)
    keys = mh.band_keys(sig)
    start = 0
    for i, text in enumerate(texts):
        expected = _ref_shingles(text)
        assert sh[start : start + per[i]].tolist() == expected, text[:60]
        start += per[i]
        np.testing.assert_array_equal(sig[i], _ref_signature(mh, expected))
        assert keys[i].tolist() == _ref_band_keys(mh, sig[i])


def test_short_and_empty_documents():
    sh, per = shingle_hashes(["one two", "", "a b c d e f"], 5)
    assert per.tolist() == [1, 0, 2]
    sig = MinHasher().signatures(["one two", "", "...!!!"])
    assert (sig[1] == SENTINEL).all() and (sig[2] == SENTINEL).all() and (sig[0] != SENTINEL).all()


def test_estimate_tracks_exact_jaccard():
    rng = random.Random(0)
    vocab = _vocab(rng)
    mh = MinHasher()
    errors = []
    for _ in range(150):
        words = [rng.choice(vocab) for _ in range(rng.randint(150, 300))]
        edited = list(words)
        for _ in range(rng.randint(0, len(words) // 4)):
            edited[rng.randrange(len(edited))] = rng.choice(vocab)
        a, b = " ".join(words), " ".join(edited)
        sa, sb = _shingles(a), _shingles(b)
        sig = mh.signatures([a, b])
        errors.append(estimated_jaccard(sig[0], sig[1]) - len(sa & sb) / len(sa | sb))
    errors = np.array(errors)
    assert abs(errors.mean()) < 0.015  # unbiased
    assert errors.std() < 0.06  # about sqrt(J(1-J)/128)


def test_lsh_recall_on_planted_pairs_and_no_false_pairs():
    rng = random.Random(1)
    vocab = _vocab(rng, 20000)
    originals = [" ".join(rng.choice(vocab) for _ in range(300)) for _ in range(200)]
    planted = []
    for text in originals[:50]:
        w = text.split()
        for _ in range(3):  # 3 substitutions: Jaccard of 5-shingles about 0.9
            w[rng.randrange(len(w))] = rng.choice(vocab)
        planted.append(" ".join(w))
    texts = originals + planted
    mh = MinHasher(bands=16, rows=8)
    keys = mh.band_keys(mh.signatures(texts))
    entries = np.empty(keys.size, dtype=BAND)
    entries["band"] = np.tile(np.arange(16), len(texts))
    entries["key"] = keys.reshape(-1)
    entries["gid"] = np.repeat(np.arange(len(texts)), 16)
    found = {(int(a), int(b)) for a, b in candidate_pairs(entries).tolist()}
    expected = {(i, 200 + i) for i in range(50)}
    assert len(found & expected) >= 49  # P(candidate | J=0.9) = 0.9997 per pair
    assert found - expected == set()


def test_candidate_pairs_equal_plain_buckets_when_most_keys_are_alone():
    # Most keys are in a bucket of one, and a count by top bits drops them before sorting: keys in a
    # bucket of several must all survive that, including those whose top bits equal a lone key's.
    rng = np.random.default_rng(5)
    lone = rng.integers(0, 1 << 63, size=20_000, dtype=np.uint64) * np.uint64(2)
    shared = np.concatenate([lone[:50] + np.uint64(1), rng.integers(0, 1 << 63, size=300, dtype=np.uint64)])
    keys = np.concatenate([lone, np.repeat(shared, rng.integers(2, 6, size=len(shared)))])
    entries = np.empty(len(keys), dtype=BAND)
    entries["band"], entries["key"] = 0, keys
    entries["gid"] = rng.permutation(len(keys))
    buckets = {}
    for key, gid in zip(keys.tolist(), entries["gid"].tolist()):
        buckets.setdefault(key, []).append(gid)
    expected = {(min(g), x) for g in buckets.values() for x in g if x != min(g)}
    assert {(int(a), int(b)) for a, b in candidate_pairs(entries).tolist()} == expected


def test_components_keep_the_smallest_gid():
    edges = np.array([(5, 9), (9, 12), (1, 3), (3, 7), (12, 2)], dtype=PAIR)
    nodes, root = components(edges)
    assert dict(zip(nodes.tolist(), root.tolist())) == {1: 1, 3: 1, 7: 1, 2: 2, 5: 2, 9: 2, 12: 2}


def _sets_of(texts):
    sh, per = shingle_hashes(texts, 5)
    return grouped_sets(np.repeat(np.arange(len(texts)), per), set_elements(sh))


def test_exact_jaccard_equals_python_sets():
    rng = random.Random(3)
    vocab = _vocab(rng, 300)  # a small vocabulary: repeated shingles inside a document too
    firsts, seconds, expected = [], [], []
    for _ in range(60):
        words = [rng.choice(vocab) for _ in range(rng.randint(5, 120))]
        other = [w if rng.random() > 0.2 else rng.choice(vocab) for w in words][: rng.randint(5, len(words))]
        firsts.append(" ".join(words))
        seconds.append(" ".join(other))
        sa, sb = _shingles(firsts[-1]), _shingles(seconds[-1])
        expected.append(len(sa & sb) / len(sa | sb))
    got = exact_jaccard(_sets_of(firsts), _sets_of(seconds), len(firsts))
    np.testing.assert_allclose(got, expected, atol=1e-12)


def _dedup(texts, tmp_path, threshold=0.7):
    step = MinHashDedup(MinHashConfig(threshold=threshold), StepContext(Sharding(1, 1), 0, tmp_path))
    docs = [Doc(make_gid(0, i), t, "webpages") for i, t in enumerate(texts)]
    for d in docs:
        step.collect(d)
    step.sync(Comm(None, 0, 1))
    return [i for i, d in enumerate(docs) if step.apply(d) is not None]


def _edited(rng, words, vocab, target):
    """A copy of `words` whose 5-shingle Jaccard with the original is within 0.01 of target."""
    while True:
        w = list(words)
        for i in rng.sample(range(len(w)), int(len(w) * (1 - target ** (1 / 5)) / 1.6)):
            w[i] = rng.choice(vocab)
        sa, sb = _shingles(" ".join(words)), _shingles(" ".join(w))
        if abs(len(sa & sb) / len(sa | sb) - target) < 0.01:
            return " ".join(w)


def test_near_duplicates_are_confirmed_by_exact_jaccard(tmp_path):
    # Pairs 0.04 either side of the threshold: the signature's estimate (standard error about 0.04
    # here) would misjudge some of them; the exact Jaccard judges each one right.
    rng = random.Random(7)
    vocab = _vocab(rng, 20000)
    originals = [[rng.choice(vocab) for _ in range(400)] for _ in range(40)]
    above = [_edited(rng, w, vocab, 0.74) for w in originals[:20]]
    below = [_edited(rng, w, vocab, 0.66) for w in originals[20:]]
    texts = [" ".join(w) for w in originals] + above + below
    removed = _dedup(texts, tmp_path)
    assert removed == list(range(40, 60))  # every copy above 0.7 goes, none below
