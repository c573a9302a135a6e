"""SFT data curation as the report describes it (section 3.1.1), as pure functions over records.

1. Group by source, manually rate a random sample of each source, drop sources below a threshold
   (`sample_for_rating`, `source_ratings`, `drop_low_sources`).
2. Label category and difficulty: annotators label a seed set, a model fine-tuned on it labels the
   rest. `label_records` applies any labeler callable; `keyword_labeler` is a transparent rule
   baseline, not the report's model-based labeler.
3. Prune and reweight by those labels (`reweight`), and drop duplicates (`dedup`).

A record is an SFT JSONL object: {"messages": [...], "source"?, "rating"?, "category"?,
"difficulty"?}.
"""

import hashlib
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable

Labeler = Callable[[dict], dict[str, str]]


def source_of(record: dict) -> str:
    return str(record.get("source") or "default")


def sample_for_rating(records: list[dict], *, per_source: int, seed: int = 0) -> dict[str, list[dict]]:
    """A seeded random sample of up to `per_source` records of every source, for manual rating."""
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_source[source_of(r)].append(r)
    rng = random.Random(seed)
    return {s: rng.sample(rs, min(per_source, len(rs))) for s, rs in sorted(by_source.items())}


def rating_sums(records: Iterable[dict], field: str = "rating") -> dict[str, tuple[float, int]]:
    """(sum, count) of the `rating` field per source, over the records that carry one; the sums of
    several shares add up (`merge_rating_sums`), so each rank can rate its own."""
    sums: dict[str, tuple[float, int]] = {}
    for r in records:
        if isinstance(r.get(field), (int, float)):
            total, n = sums.get(source_of(r), (0.0, 0))
            sums[source_of(r)] = (total + float(r[field]), n + 1)
    return sums


def merge_rating_sums(parts: Iterable[dict[str, tuple[float, int]]]) -> dict[str, float]:
    """Mean rating per source from the (sum, count) of every share."""
    merged: dict[str, tuple[float, int]] = {}
    for part in parts:
        for source, (total, n) in part.items():
            t, m = merged.get(source, (0.0, 0))
            merged[source] = (t + total, m + n)
    return {s: total / n for s, (total, n) in merged.items()}


def source_ratings(records: Iterable[dict], field: str = "rating") -> dict[str, float]:
    """Mean of the `rating` field per source, over the records that carry one."""
    return merge_rating_sums([rating_sums(records, field)])


def drop_low_sources(records: list[dict], ratings: dict[str, float], threshold: float) -> tuple[list[dict], list[str]]:
    """Keep records of sources rated >= threshold (unrated sources are kept); returns (kept, dropped sources)."""
    dropped = sorted(s for s, v in ratings.items() if v < threshold)
    return [r for r in records if source_of(r) not in dropped], dropped


_KEYWORDS = {
    "math": re.compile(r"\d\s*[-+*/=^]\s*\d|equation|integral|solve|calculate|计算|方程|数学"),
    "code": re.compile(r"```|def |class |function|python|javascript|代码|编程"),
    "translation": re.compile(r"translat|翻译"),
    "function_call": re.compile(r'"arguments"|tool call|function call|调用'),
}


def keyword_labeler(record: dict) -> dict[str, str]:
    """Category from keywords of the first user turn, difficulty from the answer's length.

    A rule baseline for when no labeling model is at hand: category is the first of math, code,
    translation, function_call whose pattern matches, else `general`; difficulty is `easy` under 200
    characters of assistant text, `hard` over 1000, `medium` between.
    """
    user = next((m["content"] for m in record.get("messages", []) if m["role"] == "user"), "")
    category = next((c for c, rx in _KEYWORDS.items() if rx.search(user.lower())), "general")
    answer = sum(len(m["content"]) for m in record.get("messages", []) if m["role"] == "assistant")
    difficulty = "easy" if answer < 200 else "hard" if answer > 1000 else "medium"
    return {"category": category, "difficulty": difficulty}


def label_records(records: list[dict], labeler: Labeler, *, overwrite: bool = False) -> list[dict]:
    """Records with `category`/`difficulty` set by `labeler` (existing labels kept unless `overwrite`)."""
    out = []
    for r in records:
        labels = labeler(r)
        out.append({**r, **{k: v for k, v in labels.items() if overwrite or k not in r}})
    return out


def record_weight(record: dict, weights: dict[str, float]) -> float:
    """Product of the weights of the record's labels (`category:<c>`, `difficulty:<d>`), 1 when none match."""
    w = 1.0
    for field in ("category", "difficulty"):
        key = f"{field}:{record.get(field)}"
        if key in weights:
            w *= weights[key]
    return w


def reweight(records: list[dict], weights: dict[str, float], *, seed: int = 0) -> list[dict]:
    """Repeat each record floor(w) times plus once more with probability frac(w); w = 0 prunes it."""
    rng = random.Random(seed)
    out = []
    for r in records:
        w = record_weight(r, weights)
        copies = int(w) + (1 if rng.random() < w - int(w) else 0)
        out.extend([r] * copies)
    return out


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def conversation_key(record: dict) -> str:
    """Hash of the conversation with case and whitespace normalised."""
    parts = [f"{m['role']}\x00{_normalise(m['content'])}" for m in record.get("messages", [])]
    return hashlib.sha1("\x01".join(parts).encode()).hexdigest()


def dedup(records: list[dict], key: Callable[[dict], str] = conversation_key) -> tuple[list[dict], int]:
    """First occurrence of each key, in order; returns (kept, number dropped)."""
    seen: set[str] = set()
    kept = []
    for r in records:
        k = key(r)
        if k not in seen:
            seen.add(k)
            kept.append(r)
    return kept, len(records) - len(kept)
