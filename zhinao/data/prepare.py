"""Preparation steps of report section 2.1.1 that look at one document: URL lists, sensitive
keywords, language identification (and the English-page-with-Chinese rule)."""

import re
from functools import lru_cache
from urllib.parse import urlsplit

from zhinao.config.data import KeywordFilterConfig, LangIdConfig, UrlFilterConfig
from zhinao.data.io import Doc
from zhinao.data.steps import Drop, resource_lines
from zhinao.data.text import han_count


def url_host(url: str) -> str | None:
    try:
        host = urlsplit(url if "//" in url else f"//{url}").hostname
    except ValueError:
        return None
    return host.lower().rstrip(".") if host else None


class HostList:
    """Hosts matched with their subdomains, plus URL substrings for entries with a path."""

    def __init__(self, entries: list[str]):
        self.hosts = {e.lower().strip(".") for e in entries if "/" not in e}
        self.substrings = [e.lower() for e in entries if "/" in e]

    def __bool__(self) -> bool:
        return bool(self.hosts or self.substrings)

    def match(self, url: str) -> bool:
        host = url_host(url)
        if host:
            parts = host.split(".")
            if any(".".join(parts[i:]) in self.hosts for i in range(len(parts))):
                return True
        low = url.lower()
        return any(s in low for s in self.substrings)


class UrlFilter:
    names = ("url_filter",)

    def __init__(self, cfg: UrlFilterConfig, *, extra_black: list[str] = (), extra_white: list[str] = ()):
        black = resource_lines("url_blacklist.txt") if cfg.blacklist is None else cfg.blacklist
        self.black = HostList([*black, *extra_black])
        self.white = HostList([*cfg.whitelist, *extra_white])

    def __call__(self, doc: Doc) -> Drop | None:
        if doc.url is None:
            return None
        if self.white and self.white.match(doc.url):
            doc.whitelisted = True
            return None
        if self.black.match(doc.url):
            return Drop("url_filter", f"blacklisted_host:{url_host(doc.url) or doc.url[:100]}")
        return None


def trie_regex(words: list[str]) -> re.Pattern:
    """One alternation shaped as a trie: `re` tries a plain alternation word by word at every
    position, a trie only follows the branch that matches."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and not ends else "(?:" + "|".join(branches) + ")"
        return body + ("?" if ends else "")

    return re.compile(emit(trie)) if trie else re.compile(r"(?!)")


class KeywordFilter:
    names = ("keywords",)

    def __init__(self, cfg: KeywordFilterConfig, *, extra: list[str] = ()):
        words = resource_lines("sensitive_keywords.txt") if cfg.keywords is None else cfg.keywords
        self.pattern = trie_regex(sorted({w.lower() for w in [*words, *extra] if w.strip()}))
        self.min_hits = cfg.min_hits

    def __call__(self, doc: Doc) -> Drop | None:
        if doc.whitelisted:
            return None
        low = doc.text.lower()
        if self.min_hits == 1:
            m = self.pattern.search(low)
            return Drop("keywords", f"sensitive_keyword:{m.group(0)}") if m else None
        hits = self.pattern.findall(low)
        if len(hits) >= self.min_hits:
            return Drop("keywords", f"sensitive_keywords:{len(hits)}:{hits[0]}")
        return None


@lru_cache(maxsize=1)
def _py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class FastTextLid:
    """A fastText language-ID model (e.g. lid.176.bin) behind the same `classify` as py3langid."""

    def __init__(self, path: str):
        try:
            import fasttext
        except ImportError as e:
            raise RuntimeError("langId.fasttextModel needs the fasttext package (pip install fasttext-wheel)") from e
        self.model = fasttext.load_model(path)

    def classify(self, text: str) -> tuple[str, float]:
        labels, probs = self.model.predict(text.replace("\n", " "), k=1)
        return labels[0].removeprefix("__label__"), float(probs[0])


class LangId:
    names = ("lang_id", "english_with_chinese")

    def __init__(self, cfg: LangIdConfig, *, model_path: str | None = None):
        self.cfg = cfg
        self.keep = set(cfg.languages)
        self.skip = set(cfg.skip_sources)
        self.model = FastTextLid(model_path) if model_path else _py3langid()

    def __call__(self, doc: Doc) -> Drop | None:
        if doc.source in self.skip:
            return None
        lang, score = self.model.classify(doc.text[: self.cfg.max_chars].replace("\n", " "))
        if lang not in self.keep:
            return Drop("lang_id", f"language:{lang}")
        if score < self.cfg.min_score:
            return Drop("lang_id", f"uncertain:{lang}:{score:.2f}")
        if lang == "en" and self.cfg.english_with_chinese and han_count(doc.text) > self.cfg.english_max_han:
            return Drop("english_with_chinese", "english_page_with_chinese")
        return None
