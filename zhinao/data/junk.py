"""Paragraph junk classifier (report section 2.1.2) and the quality-classifier hook.

The report trains a fastText paragraph model on millions of semi-supervised labels. We ship the
same shape in numpy: logistic regression over hashed features (token unigrams and bigrams, CJK
characters counting as tokens, plus a few layout features such as length and end punctuation),
trained by full-batch Adagrad. `train` / `save` / `load` let a user replace the tiny seed model
(zhinao/data/resources/junk_seed.jsonl) with one trained on their own labelled paragraphs; the same
class serves as a document quality classifier (`quality.model`).
"""

import io
import json
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import import_module, resources

import numpy as np

from zhinao.config.data import JunkConfig, QualityConfig
from zhinao.data.clean import is_exam
from zhinao.data.io import Doc
from zhinao.data.minhash import token_hashes
from zhinao.data.steps import Drop
from zhinao.data.text import TERMINAL, paragraphs

_U64 = np.uint64
_BIGRAM_MUL = _U64(0x9E3779B97F4A7C15)
_N_SHAPE = 32  # reserved feature ids for layout features


_DIGITS = re.compile(r"\d")
_SEPS = re.compile(r"[|>»·•/]")


def _shape_features(text: str) -> list[int]:
    n = len(text)
    digits = len(_DIGITS.findall(text))
    seps = len(_SEPS.findall(text))
    feats = [
        min(n.bit_length(), 11),  # 0..11: log2 length
        12 + (1 if text.endswith(TERMINAL) else 0),
        14 + (1 if text.endswith(("...", "…", "»", ">")) else 0),
        16 + min(4, 5 * digits // max(n, 1)),  # digit share in fifths
        21 + min(3, seps),
        25 + (1 if "http" in text or "www." in text else 0),
        27 + (1 if "©" in text or "copyright" in text.lower() or "版权" in text else 0),
    ]
    return feats


class HashedLogReg:
    """Binary logistic regression over hashed sparse features; `predict_proba` gives P(label 1)."""

    def __init__(self, weights: np.ndarray, bias: float = 0.0):
        self.w = np.asarray(weights, dtype=np.float32)
        self.bias = float(bias)

    @property
    def n_features(self) -> int:
        return self.w.size

    @staticmethod
    def featurize(texts: Sequence[str], n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, feature id, value) triples. N-gram features of a text are scaled by
        1/sqrt(count), so long and short paragraphs weigh alike."""
        tok, per = token_hashes(list(texts))
        rows = np.repeat(np.arange(len(texts)), per)
        same = rows[1:] == rows[:-1]
        big = tok[:-1][same] * _BIGRAM_MUL + tok[1:][same]
        big_rows = rows[:-1][same]
        space = _U64(n_features - _N_SHAPE)
        ids = np.concatenate([tok % space, big % space]).astype(np.int64) + _N_SHAPE
        r = np.concatenate([rows, big_rows])
        counts = np.bincount(r, minlength=len(texts)).astype(np.float32)
        vals = 1.0 / np.sqrt(np.maximum(counts[r], 1.0))
        shape = [(i, f) for i, t in enumerate(texts) for f in _shape_features(t)]
        sr = np.array([s[0] for s in shape], dtype=np.int64)
        sf = np.array([s[1] for s in shape], dtype=np.int64)
        return (
            np.concatenate([r, sr]),
            np.concatenate([ids, sf]),
            np.concatenate([vals, np.ones(len(shape), dtype=np.float32)]).astype(np.float32),
        )

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.float32)
        r, f, v = self.featurize(texts, self.n_features)
        return np.bincount(r, weights=self.w[f] * v, minlength=len(texts)) + self.bias

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision(texts)))

    __call__ = predict_proba

    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        labels: Sequence[int],
        *,
        n_features: int = 1 << 18,
        epochs: int = 200,
        lr: float = 0.5,
        l2: float = 1e-4,
    ) -> "HashedLogReg":
        """Full-batch Adagrad on the log loss; deterministic (no sampling)."""
        y = np.asarray(labels, dtype=np.float64)
        r, f_full, v = cls.featurize(texts, n_features)
        # Train over the features that occur only: the hashed space is mostly empty.
        used, f = np.unique(f_full, return_inverse=True)
        m = used.size
        w = np.zeros(m, dtype=np.float64)
        b, gw2, gb2 = 0.0, np.full(m, 1e-8), 1e-8
        n = len(texts)
        for _ in range(epochs):
            z = np.bincount(r, weights=w[f] * v, minlength=n) + b
            err = 1.0 / (1.0 + np.exp(-z)) - y
            gw = np.bincount(f, weights=err[r] * v, minlength=m) / n + l2 * w
            gb = err.mean()
            gw2 += gw * gw
            gb2 += gb * gb
            w -= lr * gw / np.sqrt(gw2)
            b -= lr * gb / np.sqrt(gb2)
        full = np.zeros(n_features, dtype=np.float64)
        full[used] = w
        return cls(full, b)

    def to_bytes(self) -> bytes:
        nz = np.flatnonzero(self.w)
        buf = io.BytesIO()
        np.savez_compressed(buf, n=self.n_features, idx=nz, val=self.w[nz], bias=self.bias)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "HashedLogReg":
        z = np.load(io.BytesIO(data))
        w = np.zeros(int(z["n"]), dtype=np.float32)
        w[z["idx"]] = z["val"]
        return cls(w, float(z["bias"]))

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, path: str) -> "HashedLogReg":
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())


def seed_examples() -> tuple[list[str], list[int]]:
    """The shipped seed set: {"text": paragraph, "junk": 0/1} lines, English and Chinese."""
    lines = resources.files("zhinao.data").joinpath("resources", "junk_seed.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in lines.splitlines() if line.strip()]
    return [r["text"] for r in rows], [int(r["junk"]) for r in rows]


@lru_cache(maxsize=1)
def seed_model() -> HashedLogReg:
    texts, labels = seed_examples()
    return HashedLogReg.train(texts, labels)


def junk_fate(labels: Sequence[bool], lengths: Sequence[int], cfg: JunkConfig) -> tuple[bool, list[bool]]:
    """From the label sequence: (drop the document?, which paragraphs to keep). A document mostly
    made of junk is dropped; otherwise leading and trailing junk runs (header and footer
    boilerplate) are cut and interior junk paragraphs are kept."""
    total = sum(lengths)
    junk_chars = sum(n for n, j in zip(lengths, labels) if j)
    if total == 0 or junk_chars / total > cfg.max_junk_share:
        return True, [False] * len(labels)
    keep = [True] * len(labels)
    if cfg.trim_edges:
        i = 0
        while i < len(labels) and labels[i]:
            keep[i] = False
            i += 1
        j = len(labels) - 1
        while j >= i and labels[j]:
            keep[j] = False
            j -= 1
    return False, keep


class Junk:
    names = ("junk",)

    def __init__(self, cfg: JunkConfig, model: HashedLogReg | None = None, *, exam_min_markers: int = 3):
        self.cfg = cfg
        self.model = model or seed_model()
        self.skip = set(cfg.skip_sources)
        self.exam_min_markers = exam_min_markers

    def __call__(self, doc: Doc) -> Drop | None:
        if doc.whitelisted or doc.source in self.skip:
            return None
        if self.cfg.skip_exams and is_exam(doc.text, self.exam_min_markers):
            return None
        paras = paragraphs(doc.text)
        labels = list(self.model.predict_proba(paras) >= self.cfg.threshold)
        if not any(labels):
            return None
        drop, keep = junk_fate(labels, [len(p) for p in paras], self.cfg)
        if drop:
            return Drop("junk", "junk_paragraphs")
        if not all(keep):
            doc.set_text("\n".join(p for p, k in zip(paras, keep) if k))
        return None


def load_scorer(spec: str, fetch: Callable[[str], bytes]) -> Callable[[list[str]], Sequence[float]]:
    """`package.module:name`, a callable taking a list of texts and returning scores in [0, 1] (a
    class is instantiated without arguments first), or the URI of a saved `HashedLogReg`."""
    if ":" in spec and "://" not in spec:
        mod, _, name = spec.partition(":")
        obj = getattr(import_module(mod), name)
        return obj() if isinstance(obj, type) else obj
    return HashedLogReg.from_bytes(fetch(spec))


class Quality:
    names = ("quality",)

    def __init__(self, cfg: QualityConfig, scorer: Callable[[list[str]], Sequence[float]]):
        self.cfg = cfg
        self.scorer = scorer
        self.skip = set(cfg.skip_sources)

    def __call__(self, doc: Doc) -> Drop | None:
        if doc.whitelisted or doc.source in self.skip:
            return None
        score = float(self.scorer([doc.text])[0])
        return Drop("quality", "low_quality") if score < self.cfg.threshold else None
