"""Cross-shard exact deduplication: URL and body (report 2.1.1), paragraphs and sentences (2.1.3).

Each step collects (hash, gid, position) records during one pass, routes them to the rank owning
the hash, decides there, and routes the decisions back to the rank owning the document. Choices
inside a duplicate group are deterministic: the smallest gid survives URL/body dedup, and a
pseudo-random but fixed order (a hash of hash, gid and position) picks which paragraph and sentence
copies go, so that the output does not depend on the number of ranks.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import xxhash

from zhinao.config.data import ExactDedupConfig, ParagraphDedupConfig, SentenceDedupConfig
from zhinao.data.exchange import Columns, Comm, Sharding, Spool, mix64
from zhinao.data.io import Doc
from zhinao.data.steps import Drop
from zhinao.data.text import TOKEN_RE, normalize, paragraphs, sentence_spans

_U64 = np.uint64
KEY = np.dtype([("h", "<u8"), ("gid", "<u8")])
POS = np.dtype([("h", "<u8"), ("gid", "<u8"), ("idx", "<u4")])
GIDPOS = np.dtype([("gid", "<u8"), ("idx", "<u4")])


@dataclass
class StepContext:
    sharding: Sharding
    rank: int
    tmp: Path


# ---- pure decisions ----------------------------------------------------------------------------


def non_first(keys: np.ndarray, *cols: str) -> np.ndarray:
    """gids of records whose key columns equal an earlier record's, in (key, gid) order: every
    duplicate but the smallest gid."""
    if len(keys) == 0:
        return np.zeros(0, dtype=_U64)
    order = np.lexsort([keys["gid"], *(keys[c] for c in reversed(cols))])
    k = keys[order]
    same = np.ones(len(k) - 1, dtype=bool)
    for c in cols:
        same &= k[c][1:] == k[c][:-1]
    return np.unique(k["gid"][1:][same])


def group_choice(recs: np.ndarray, n_remove) -> np.ndarray:
    """Records to delete from each group of equal `h`: the first n_remove(N) of the group in a fixed
    pseudo-random order. `recs` has fields h, gid, idx."""
    if len(recs) == 0:
        return recs[:0]
    tiebreak = mix64(recs["h"] ^ (recs["gid"] * _U64(0x9E3779B97F4A7C15)) ^ recs["idx"].astype(_U64))
    order = np.lexsort([tiebreak, recs["h"]])
    r = recs[order]
    starts = np.flatnonzero(np.concatenate([[True], r["h"][1:] != r["h"][:-1]]))
    sizes = np.diff(np.concatenate([starts, [len(r)]]))
    rank_in_group = np.arange(len(r)) - np.repeat(starts, sizes)
    limit = np.repeat(n_remove(sizes), sizes)
    return r[rank_in_group < limit]


def paragraph_deletions(sizes: np.ndarray, share: float) -> np.ndarray:
    """Copies deleted from a group of N identical paragraphs: share * N rounded half up, and never
    when N = 1."""
    return np.where(sizes > 1, np.floor(share * sizes + 0.5), 0).astype(np.int64)


def sentence_deletions(sizes: np.ndarray) -> np.ndarray:
    """A sentence unit seen N times keeps ceil(sqrt(N)) copies."""
    return sizes - np.ceil(np.sqrt(sizes)).astype(np.int64)


def _h64(s: str) -> int:
    return xxhash.xxh3_64_intdigest(s.encode("utf-8", errors="surrogatepass"))


def url_key(url: str) -> str:
    """Scheme and fragment dropped, host lowercased, trailing '/' ignored: one page, one key."""
    try:
        p = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    return f"{p.netloc.lower()}{p.path.rstrip('/')}" + (f"?{p.query}" if p.query else "")


def _to_owners(comm: Comm, ctx: StepContext, tag: str, recs: np.ndarray) -> np.ndarray:
    return comm.route(tag, recs, ctx.sharding.owner(recs["gid"]))


# ---- steps -------------------------------------------------------------------------------------


class ExactDedup:
    names = ("url_dedup", "exact_dedup")

    def __init__(self, cfg: ExactDedupConfig, ctx: StepContext):
        self.cfg, self.ctx = cfg, ctx
        self.urls = Columns("h", "gid")
        self.bodies = Columns("hi", "lo", "gid")
        self.url_dups: set[int] = set()
        self.body_dups: set[int] = set()

    def collect(self, doc: Doc) -> None:
        if self.cfg.url and doc.url is not None:
            self.urls.append(_h64(url_key(doc.url)), doc.gid)
        if self.cfg.body:
            h = xxhash.xxh3_128_intdigest(doc.text.encode("utf-8"))
            self.bodies.append(h >> 64, h & 0xFFFFFFFFFFFFFFFF, doc.gid)

    def sync(self, comm: Comm) -> None:
        w = comm.world_size
        urls = np.empty(len(self.urls), dtype=KEY)
        urls["h"], urls["gid"] = self.urls.numpy("h"), self.urls.numpy("gid")
        mine = comm.route("exact/url-keys", urls, (urls["h"] % _U64(w)).astype(np.int64))
        losers = np.zeros(len(non_first(mine, "h")), dtype=GIDPOS)
        losers["gid"] = non_first(mine, "h")
        url_dups = _to_owners(comm, self.ctx, "exact/url-drops", losers)["gid"]
        self.url_dups = set(url_dups.tolist())

        body = np.empty(len(self.bodies), dtype=[("hi", "<u8"), ("lo", "<u8"), ("gid", "<u8")])
        body["hi"], body["lo"], body["gid"] = (self.bodies.numpy(c) for c in ("hi", "lo", "gid"))
        # A page already dropped as a URL duplicate must not be the one copy a body keeps.
        body = body[~np.isin(body["gid"], url_dups)]
        mine = comm.route("exact/body-keys", body, (body["lo"] % _U64(w)).astype(np.int64))
        dup = non_first(mine, "hi", "lo")
        losers = np.zeros(len(dup), dtype=GIDPOS)
        losers["gid"] = dup
        self.body_dups = set(_to_owners(comm, self.ctx, "exact/body-drops", losers)["gid"].tolist())
        self.urls = self.bodies = None

    def apply(self, doc: Doc) -> Drop | None:
        if doc.gid in self.url_dups:
            return Drop("url_dedup", "duplicate_url")
        if doc.gid in self.body_dups:
            return Drop("exact_dedup", "duplicate_body")
        return None


class _PositionDedup(ABC):
    """Shared machinery of paragraph and sentence dedup: (hash, gid, position) records."""

    tag = ""

    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        self.spool = Spool(POS, ctx.sharding.world_size, ctx.tmp, self.tag)
        self.deleted: dict[int, set[int]] = {}

    def _add(self, doc: Doc, items: list[tuple[int, str]]) -> None:
        if not items:
            return
        recs = np.empty(len(items), dtype=POS)
        recs["h"] = [_h64(normalize(t)) for _, t in items]
        recs["gid"] = doc.gid
        recs["idx"] = [i for i, _ in items]
        self.spool.add(recs, (recs["h"] % _U64(self.spool.world_size)).astype(np.int64))

    @abstractmethod
    def n_remove(self, sizes: np.ndarray) -> np.ndarray:
        """How many copies to delete from groups of `sizes` equal items (the policy of each dedup)."""

    def sync(self, comm: Comm) -> None:
        got = comm.exchange(f"{self.tag}/keys", self.spool.parts())
        mine = np.concatenate(got) if got else np.zeros(0, dtype=POS)
        doomed = group_choice(mine, self.n_remove)
        back = np.empty(len(doomed), dtype=GIDPOS)
        back["gid"], back["idx"] = doomed["gid"], doomed["idx"]
        for gid, idx in _to_owners(comm, self.ctx, f"{self.tag}/drops", back).tolist():
            self.deleted.setdefault(gid, set()).add(idx)
        self.spool.remove()


class ParagraphDedup(_PositionDedup):
    names = ("paragraph_dedup",)
    tag = "paragraph"

    def __init__(self, cfg: ParagraphDedupConfig, ctx: StepContext):
        self.cfg = cfg
        super().__init__(ctx)

    def n_remove(self, sizes: np.ndarray) -> np.ndarray:
        return paragraph_deletions(sizes, self.cfg.delete_share)

    def collect(self, doc: Doc) -> None:
        self._add(doc, [(i, p) for i, p in enumerate(paragraphs(doc.text)) if len(p) >= self.cfg.min_chars])

    def apply(self, doc: Doc) -> Drop | None:
        gone = self.deleted.get(doc.gid)
        if not gone:
            return None
        kept = [p for i, p in enumerate(paragraphs(doc.text)) if i not in gone]
        if not kept:
            return Drop("paragraph_dedup", "all_paragraphs_duplicated")
        doc.set_text("\n".join(kept))
        return None


def sentence_units(text: str, guard: int) -> list[tuple[int, int, int, bool]]:
    """(paragraph index, start, end, long enough) of each dedup unit: our reading of the report's
    16-gram guard. A sentence of at least `guard` tokens is a unit on its own; consecutive shorter
    sentences of a paragraph are joined into one unit, which is deduplicated only if the run
    reaches `guard` tokens. A short sentence is thus never deleted for being common by itself."""
    units = []
    for pi, para in enumerate(paragraphs(text)):
        run_start, run_tokens, run_end = None, 0, 0
        for s, e in sentence_spans(para):
            n = len(TOKEN_RE.findall(para[s:e]))
            if n >= guard:
                if run_start is not None:
                    units.append((pi, run_start, run_end, run_tokens >= guard))
                    run_start, run_tokens = None, 0
                units.append((pi, s, e, True))
            else:
                run_start = s if run_start is None else run_start
                run_tokens += n
                run_end = e
        if run_start is not None:
            units.append((pi, run_start, run_end, run_tokens >= guard))
    return units


class SentenceDedup(_PositionDedup):
    names = ("sentence_dedup",)
    tag = "sentence"

    def __init__(self, cfg: SentenceDedupConfig, ctx: StepContext):
        self.cfg = cfg
        super().__init__(ctx)

    def n_remove(self, sizes: np.ndarray) -> np.ndarray:
        return sentence_deletions(sizes)

    def collect(self, doc: Doc) -> None:
        paras = paragraphs(doc.text)
        units = sentence_units(doc.text, self.cfg.guard_tokens)
        self._add(doc, [(i, paras[p][s:e]) for i, (p, s, e, ok) in enumerate(units) if ok])

    def apply(self, doc: Doc) -> Drop | None:
        gone = self.deleted.get(doc.gid)
        if not gone:
            return None
        paras = paragraphs(doc.text)
        pieces: dict[int, list[str]] = {}
        for i, (p, s, e, _) in enumerate(sentence_units(doc.text, self.cfg.guard_tokens)):
            if i not in gone:
                pieces.setdefault(p, []).append(paras[p][s:e].strip())
        kept = [_join_sentences(pieces[p]) for p in sorted(pieces)]
        kept = [k for k in kept if k]
        if not kept:
            return Drop("sentence_dedup", "all_sentences_duplicated")
        doc.set_text("\n".join(kept))
        return None


def _join_sentences(parts: list[str]) -> str:
    # Chinese sentences run together; English ones are separated by a space.
    out = ""
    for p in parts:
        if out and not (out[-1] in "。！？；" or p[:1] >= "\u3000"):
            out += " "
        out += p
    return out
