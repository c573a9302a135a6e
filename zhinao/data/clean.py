"""Document rules of the report's appendix A (Dolma-inspired), with looser thresholds for exams.

Each rule returns the reason a document fails it; all ratios are over paragraphs (lines), sentences
or rule tokens (Latin words, numbers, single CJK characters), so Chinese and English are judged
on the same footing.
"""

import re
from itertools import chain, compress
from operator import itemgetter

from zhinao.config.data import RulesConfig, RuleThresholds
from zhinao.data.io import Doc
from zhinao.data.steps import Drop
from zhinao.data.text import ELLIPSES, TERMINAL, TOKEN_RE, paragraphs, split_sentences, top_ngram_share

_EXAM_RE = re.compile(
    r"^\s*[(（]?[A-DＡ-Ｄ][.．、)）]\s*\S"  # option lines
    r"|答案|解析|选择题|填空题|判断题|简答题|第\s*\d+\s*题|【[^】]{1,6}】"
    r"|\b(?:Answer|Solution|Explanation)\s*[:：]|^\s*(?:Question|Q)\s*\d+",
    re.MULTILINE,
)
_MIN_WORDS_FOR_LENGTH = 20  # mean word length on fewer English words is noise (e.g. a zh page)


def is_exam(text: str, min_markers: int) -> bool:
    n = 0
    for _ in _EXAM_RE.finditer(text):
        n += 1
        if n >= min_markers:
            return True
    return False


def check_rules(text: str, th: RuleThresholds) -> str | None:
    """The name of the first rule the document fails, or None.

    One tokenizer pass feeds every rule: words, numbers and punctuation are read off the token list
    (a Python filter over ~200 tokens costs less than one more regex pass over the text)."""
    low = text.lower()
    paras = paragraphs(low)
    para_toks = [TOKEN_RE.findall(p) for p in paras]
    toks = list(chain.from_iterable(para_toks))
    n_tok = len(toks)
    if n_tok < th.min_tokens:
        return "too_short"

    # Punctuation: non-space characters outside words, numbers and CJK characters.
    nonspace = sum(map(len, low.split()))
    if nonspace and (nonspace - sum(map(len, toks))) / nonspace > th.max_punct_ratio:
        return "punct_ratio"

    n_para = len(paras)
    if sum(p.endswith(ELLIPSES) for p in paras) / n_para > th.max_ellipsis_paragraph_ratio:
        return "ellipsis_paragraphs"
    if sum(not p.endswith(TERMINAL) for p in paras) / n_para > th.max_no_terminal_punct_ratio:
        return "no_terminal_punct"

    # Word statistics through C-level maps: a token starting with a digit is a number, one at or
    # above U+3040 a CJK character, any other a word.
    lens = list(map(len, toks))
    first = list(map(itemgetter(0), toks))
    is_num = list(map(str.isdigit, first))
    is_cjk = list(map("\u3040".__le__, first))
    n_words = n_tok - sum(is_num) - sum(is_cjk)
    if n_words >= _MIN_WORDS_FOR_LENGTH:
        mean = (sum(lens) - sum(compress(lens, is_num)) - sum(compress(lens, is_cjk))) / n_words
        if mean < th.min_mean_word_length or mean > th.max_mean_word_length:
            return "mean_word_length"
    if max(lens) > min(th.long_word_chars, th.long_number_digits):
        n_long = sum(
            (_digits(t) > th.long_number_digits) if num else (not cjk and len(t) > th.long_word_chars)
            for t, num, cjk in zip(toks, is_num, is_cjk)
        )
        if n_long / n_tok > th.max_long_token_ratio:
            return "abnormal_token_length"

    sents = [s for s in (x.strip() for x in split_sentences(low)) if s]
    if len(sents) > 1 and (len(sents) - len(set(sents))) / len(sents) > th.max_dup_sentence_ratio:
        return "repeated_sentences"

    if sum(len(pt) < th.short_paragraph_tokens for pt in para_toks) / n_para > th.max_short_paragraph_ratio:
        return "short_paragraphs"

    if n_tok >= th.ngram_min_tokens:
        # The top n-gram occurs at most as often as the top (n-1)-gram, so with c <= bound * N the
        # n-gram share is at most n * bound: count only when that can exceed the limit.
        bound = 1.0
        for n, limit in ((1, th.max_top_unigram_ratio), (2, th.max_top_bigram_ratio), (3, th.max_top_trigram_ratio)):
            if n * bound <= limit:
                continue
            share = top_ngram_share(toks, n)
            if share > limit:
                return f"repeated_{n}gram"
            bound = share / n
    return None


def _digits(number: str) -> int:
    return len(number) - number.count(".") - number.count(",")


class Rules:
    names = ("rules",)

    def __init__(self, cfg: RulesConfig):
        self.cfg = cfg
        self.skip = set(cfg.skip_sources)

    def __call__(self, doc: Doc) -> Drop | None:
        if doc.whitelisted or doc.source in self.skip:
            return None
        exam = is_exam(doc.text, self.cfg.exam_min_markers)
        reason = check_rules(doc.text, self.cfg.exam_thresholds if exam else self.cfg.thresholds)
        if reason is None:
            return None
        return Drop("rules", f"{reason}:exam" if exam else reason)
