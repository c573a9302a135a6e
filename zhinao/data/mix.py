"""Source mixing toward target token ratios (report Table 1), with an oversampling cap.

Tokens are estimated as UTF-8 bytes / 4 (`text.estimate_tokens`): the tokenizer is trained after
this stage. A source with factor f is written floor(f) times plus once more with probability
frac(f), decided by a hash of the document id, so the result does not depend on the world size.
"""

import json

import numpy as np

from zhinao.config.data import MixConfig
from zhinao.data.exchange import Comm, mix64
from zhinao.data.io import Doc
from zhinao.data.steps import Drop
from zhinao.data.text import estimate_tokens

OTHER = "other"


def mix_key(source: str, targets: dict[str, float]) -> str:
    return source if source in targets else OTHER


def mix_factors(tokens: dict[str, int], cfg: MixConfig) -> dict[str, float]:
    """Repeat factor per mix key. Keys with tokens but no target share (no `other` target) are kept
    at 1x; target keys without tokens are left out and the shares renormalised."""
    present = {k: t for k, t in tokens.items() if t > 0 and cfg.targets.get(k, 0) > 0}
    if not present:
        return {k: 1.0 for k in tokens}
    total_share = sum(cfg.targets[k] for k in present)
    share = {k: cfg.targets[k] / total_share for k in present}
    cap = cfg.max_oversample
    if cfg.target_tokens is not None:
        size = float(cfg.target_tokens)
    elif cfg.allow_downsample:
        size = min(cap * present[k] / share[k] for k in present)  # the scarcest source sits at the cap
    else:
        size = max(present[k] / share[k] for k in present)  # the most abundant source sits at 1x
    factors = {k: min(cap, share[k] * size / present[k]) for k in present}
    if not cfg.allow_downsample and cfg.target_tokens is None:
        factors = {k: max(1.0, f) for k, f in factors.items()}
    return {k: factors.get(k, 1.0) for k in tokens}


def copies(gid: int, factor: float, seed: int) -> int:
    whole = int(factor)
    frac = factor - whole
    if frac <= 0:
        return whole
    u = int(mix64(np.array([gid ^ (seed * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF)], dtype=np.uint64))[0]) / 2.0**64
    return whole + (1 if u < frac else 0)


class Mix:
    names = ("mix",)

    def __init__(self, cfg: MixConfig):
        self.cfg = cfg
        self.tokens_in: dict[str, int] = {}
        self.tokens_out: dict[str, int] = {}
        self.global_in: dict[str, int] = {}
        self.factors: dict[str, float] = {}
        self.last_copies = 1
        """How many times the document passed to `apply` is written."""

    def collect(self, doc: Doc) -> None:
        k = mix_key(doc.source, self.cfg.targets)
        self.tokens_in[k] = self.tokens_in.get(k, 0) + estimate_tokens(doc.nbytes)

    def sync(self, comm: Comm) -> None:
        blob = np.frombuffer(json.dumps(self.tokens_in).encode(), dtype=np.uint8)
        for part in comm.allgather("mix/tokens", blob):
            for k, v in json.loads(part.tobytes()).items():
                self.global_in[k] = self.global_in.get(k, 0) + v
        self.factors = mix_factors(self.global_in, self.cfg)

    def apply(self, doc: Doc) -> Drop | None:
        k = mix_key(doc.source, self.cfg.targets)
        n = copies(doc.gid, self.factors.get(k, 1.0), self.cfg.seed)
        self.tokens_out[k] = self.tokens_out.get(k, 0) + n * estimate_tokens(doc.nbytes)
        self.last_copies = n
        return None if n else Drop("mix", "downsampled")
