"""Chinese and English text units shared by the rules, the junk model and dedup.

One rule token is a Latin word (letters, inner apostrophes), a number, or a single CJK character:
Chinese has no spaces, and counting characters keeps ratios comparable between the two languages.
"""

import re
from collections import Counter

# Han (CJK unified ideographs with extensions A-F, compatibility) and kana.
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
TOKEN_RE = re.compile(rf"[{CJK}]|[^\W\d_{CJK}]+(?:['’][^\W\d_{CJK}]+)*|\d+(?:[.,]\d+)*")
WORD_RE = re.compile(rf"[^\W\d_{CJK}]+(?:['’][^\W\d_{CJK}]+)*")

# English ends after . ! ? (plus closing quotes/brackets) only when followed by space, so that
# 3.14 and file.txt stay whole; Chinese ends after 。！？ whatever follows.
_SENT_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)|[。！？]+[”’」』）)]*")

TERMINAL = tuple(".!?。！？\"'”’」』)）:：;；")
ELLIPSES = ("...", "…", "。。。")


def paragraphs(text: str) -> list[str]:
    """Non-empty lines, stripped: a web page's extracted text keeps one paragraph per line."""
    return [p for p in (line.strip() for line in text.split("\n")) if p]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence in `text`; leading whitespace belongs to the sentence."""
    spans = []
    start = 0
    for m in _SENT_END.finditer(text):
        end = m.end()
        if text[start:end].strip():
            spans.append((start, end))
        start = end
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


_SENT_SPLIT = re.compile(r"[.!?]+[\"'”’)\]]*\s+|[。！？]+[”’」』）)]*|\n")


def split_sentences(text: str) -> list[str]:
    """Sentence bodies of a text (never across a line break), cut at the same ends as
    `sentence_spans` but in one C-level split that drops the end marks: the rules only compare
    sentences with each other."""
    return [s for s in _SENT_SPLIT.split(text) if s.strip()]


def sentences(text: str) -> list[str]:
    return [p[s:e].strip() for p in paragraphs(text) for s, e in sentence_spans(p)]


def tokens(text: str) -> list[str]:
    """Rule tokens, lowercased."""
    return TOKEN_RE.findall(text.lower())


def han_count(text: str) -> int:
    return len(HAN_RE.findall(text))


def top_ngram_share(toks: list[str], n: int) -> float:
    """Share of the tokens covered by the most frequent n-gram (counted n tokens per occurrence)."""
    if len(toks) < n:
        return 0.0
    grams = zip(*(toks[i:] for i in range(n))) if n > 1 else toks
    count = max(Counter(grams).values())
    # One occurrence is not repetition.
    return 0.0 if count < 2 else min(1.0, count * n / len(toks))


def normalize(text: str) -> str:
    """Lowercased with whitespace collapsed: the key of paragraph and sentence dedup."""
    return " ".join(text.lower().split())


def estimate_tokens(n_bytes: int) -> int:
    """Cheap token estimate for mixing, before the tokenizer exists: UTF-8 bytes / 4, rounded up.
    English BPE averages about 4 bytes per token, Chinese about 1.4 three-byte characters per token."""
    return (n_bytes + 3) // 4
