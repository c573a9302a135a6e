"""Hyperparameters of the data stage: the pretraining data pipeline of report section 2.1.

Steps run in the report's order (Fig. 1): preparation (URL filter, sensitive keywords, URL and exact
dedup, language ID), cleaning (document rules of appendix A, paragraph junk model, quality hook,
PII), deduplication (document MinHash-LSH, paragraph, sentence) and mixing (Table 1). Every step can
be switched off. Where the report gives a value it is the default (128 MinHash permutations, 30%
paragraph deletion, sqrt(N) sentence copies, Table 1 ratios); every other default is ours and says so.
"""

from typing import Annotated

from pydantic import Field, model_validator

from zhinao.config._base import SpecModel

# The report's Table 1 (share of pretraining tokens per source).
TABLE1_MIX = {
    "webpages": 0.6333,
    "code": 0.0925,
    "math": 0.0731,
    "books": 0.0620,
    "patents": 0.0285,
    "academic": 0.0238,
    "encyclopedia": 0.0096,
    "other": 0.0772,
}


class InputConfig(SpecModel):
    text_field: str = "text"
    """JSON field (or Parquet column) holding the document text."""

    source_field: str = "source"
    """Field naming the document's source (a key of `mix.targets`)."""

    url_field: str = "url"
    """Field holding the page URL; documents without it skip the URL filter and URL dedup."""

    default_source: str = "webpages"
    """Source given to documents whose source field is missing or empty."""

    max_doc_bytes: int = Field(default=1_000_000, ge=1)
    """A text larger than this (UTF-8 bytes) is rejected as `gigantic` (our default: 1 MB); a line
    longer than 4x this plus 64 KiB is rejected unparsed, without ever being held whole."""

    reject_raw_bytes: int = Field(default=65_536, ge=0)
    """A rejected line longer than this is stored truncated in the rejects (with its true size)."""


class UrlFilterConfig(SpecModel):
    enabled: bool = True
    """Drop documents whose URL's host is on the blacklist (report: porn, violence, cheating, dead links)."""

    blacklist: list[str] | None = None
    """Hosts or host suffixes to drop (`example.com` also matches `www.example.com`), or URL
    substrings when the entry contains a '/'. None: the small example list shipped in
    `zhinao/data/resources/url_blacklist.txt`."""

    blacklist_file: str | None = None
    """URI of a text file (one entry per line, '#' comments) whose entries are added to the blacklist."""

    whitelist: list[str] = Field(default_factory=list)
    """Trusted hosts: never blacklisted, and exempt from the sensitive-keyword, rule, junk and quality
    filters (the report scans manually reviewed high-score sites first). Dedup and PII still apply."""

    whitelist_file: str | None = None
    """URI of a text file whose entries are added to the whitelist."""


class KeywordFilterConfig(SpecModel):
    enabled: bool = True
    """Drop documents containing sensitive keywords (report: a keyword library on top of the URL lists)."""

    keywords: list[str] | None = None
    """Keywords matched case-insensitively as substrings. None: the example list shipped in
    `zhinao/data/resources/sensitive_keywords.txt`."""

    keywords_file: str | None = None
    """URI of a text file whose keywords are added to the list."""

    min_hits: int = Field(default=1, ge=1)
    """A document is dropped when at least this many keyword occurrences are found (our default: 1)."""


class ExactDedupConfig(SpecModel):
    url: bool = True
    """Keep one document per URL (the smallest global document id), report section 2.1.1."""

    body: bool = True
    """Keep one document per exact text body (128-bit hash of the text), report section 2.1.1."""


class LangIdConfig(SpecModel):
    enabled: bool = True
    """Drop documents whose language is not in `languages`."""

    languages: list[str] = Field(default_factory=lambda: ["zh", "en"])
    """ISO 639-1 codes to keep (the report trains on Chinese and English)."""

    min_score: float = Field(default=0.0, ge=0, le=1)
    """A document whose top-language probability is below this is dropped as `uncertain` (our default: 0, off)."""

    max_chars: int = Field(default=600, ge=50)
    """Only the first N characters are classified: py3langid scores byte by byte in Python, and a
    few sentences decide the language (our default)."""

    fasttext_model: str | None = None
    """URI or path of a fastText LID model (e.g. lid.176.bin, as the report uses fastText); needs the
    `fasttext` package. None: py3langid, which ships its own model."""

    english_with_chinese: bool = True
    """Drop an English page that contains Chinese characters, as the report does."""

    english_max_han: int = Field(default=0, ge=0)
    """An English page with more Han characters than this is dropped (the report: any, so 0)."""

    skip_sources: list[str] = Field(default_factory=lambda: ["code"])
    """Sources exempt from language ID (our default: code, whose identifiers confuse LID)."""


class RuleThresholds(SpecModel):
    """Document rules of the report's appendix A. The report gives no thresholds: every default is
    ours, Gopher's (Rae et al. 2021) where it has the same rule."""

    min_tokens: int = Field(default=5, ge=0)
    """Fewer rule tokens (Latin words, numbers, single CJK characters) than this: `too_short`."""

    max_punct_ratio: float = Field(default=0.25, ge=0, le=1)
    """Rule 1: share of non-space characters that are punctuation or symbols."""

    max_ellipsis_paragraph_ratio: float = Field(default=0.3, ge=0, le=1)
    """Rule 2: share of paragraphs ending in '...' or '…' (Gopher: 0.3)."""

    max_no_terminal_punct_ratio: float = Field(default=0.7, ge=0, le=1)
    """Rule 3: share of paragraphs not ending in terminal punctuation (. ! ? 。！？ etc.)."""

    min_mean_word_length: float = Field(default=3.0, ge=0)
    """Rule 4: mean length of English words below this (Gopher: 3) is abnormal."""

    max_mean_word_length: float = Field(default=10.0, ge=0)
    """Rule 4: mean length of English words above this (Gopher: 10) is abnormal."""

    max_long_token_ratio: float = Field(default=0.1, ge=0, le=1)
    """Rule 4: share of words longer than `long_word_chars` or numbers longer than `long_number_digits`."""

    long_word_chars: int = Field(default=30, ge=2)
    """A Latin word longer than this is abnormal (our default)."""

    long_number_digits: int = Field(default=20, ge=2)
    """A digit run longer than this is abnormal (our default)."""

    max_dup_sentence_ratio: float = Field(default=0.3, ge=0, le=1)
    """Rule 5: share of sentences that repeat an earlier sentence of the same document (Gopher lines: 0.3)."""

    short_paragraph_tokens: int = Field(default=4, ge=1)
    """Rule 6: a paragraph with fewer rule tokens than this is short (our default)."""

    max_short_paragraph_ratio: float = Field(default=0.6, ge=0, le=1)
    """Rule 6: share of short paragraphs above which the document is dropped (our default)."""

    max_top_unigram_ratio: float = Field(default=0.3, ge=0, le=1)
    """Rule 7: share of tokens taken by the most frequent token (our default)."""

    max_top_bigram_ratio: float = Field(default=0.2, ge=0, le=1)
    """Rule 7: share of tokens covered by the most frequent 2-gram (Gopher: 0.2)."""

    max_top_trigram_ratio: float = Field(default=0.18, ge=0, le=1)
    """Rule 7: share of tokens covered by the most frequent 3-gram (Gopher: 0.18)."""

    ngram_min_tokens: int = Field(default=30, ge=1)
    """Rule 7 applies only to documents with at least this many tokens (ratios on tiny texts are noise)."""


def _exam_thresholds() -> RuleThresholds:
    # Exams are lists of short options and numbered questions: looser on exactly those rules.
    return RuleThresholds(
        max_punct_ratio=0.35,
        max_no_terminal_punct_ratio=0.9,
        max_short_paragraph_ratio=0.9,
        max_top_unigram_ratio=0.4,
        max_top_bigram_ratio=0.3,
        max_top_trigram_ratio=0.27,
        max_dup_sentence_ratio=0.5,
    )


class RulesConfig(SpecModel):
    enabled: bool = True
    """Apply the document rules of appendix A."""

    thresholds: RuleThresholds = Field(default_factory=RuleThresholds)
    """Thresholds for ordinary documents."""

    exam_thresholds: RuleThresholds = Field(default_factory=_exam_thresholds)
    """Looser thresholds for exam-like documents (the report loosens rules for exams; values ours)."""

    exam_min_markers: int = Field(default=3, ge=1)
    """A document is exam-like with at least this many exam markers (option lines 'A.'..'D.',
    '答案', '解析', 'Answer:', '选择题', ...)."""

    skip_sources: list[str] = Field(default_factory=lambda: ["code"])
    """Sources exempt from the rules (our default: code, which is not prose)."""


class JunkConfig(SpecModel):
    enabled: bool = True
    """Classify every paragraph as junk or not (report: a paragraph-level fastText junk model)."""

    model: str | None = None
    """URI of a model saved by `zhinao.data.junk.HashedLogReg.save`. None: a model trained on the
    small seed set shipped in `zhinao/data/resources/junk_seed.jsonl` (a demo, not a production model)."""

    threshold: float = Field(default=0.5, gt=0, lt=1)
    """A paragraph is junk when its junk probability is at least this."""

    max_junk_share: float = Field(default=0.5, ge=0, le=1)
    """The document is dropped when junk paragraphs hold more than this share of its characters (our
    rule; the report's rule over the paragraph label sequence is unpublished)."""

    trim_edges: bool = True
    """Otherwise, runs of junk paragraphs at the start and end (headers, footers) are cut and junk
    paragraphs in the middle are kept (they are more often misclassified content)."""

    skip_exams: bool = True
    """Exam-like documents (`rules.examMinMarkers`) are not junk-classified: their option lines
    look like menus to a paragraph model."""

    skip_sources: list[str] = Field(default_factory=lambda: ["code"])
    """Sources the junk model is not applied to."""


class QualityConfig(SpecModel):
    model: str | None = None
    """The quality classifier hook (report: a BERT classifier, F1 85%). Either `package.module:name`
    (a callable taking a list of texts and returning scores in [0, 1], or a factory returning one),
    or the URI of a `HashedLogReg` model. None: the step is off."""

    threshold: float = Field(default=0.5, ge=0, le=1)
    """Documents scoring below this are dropped (the report's threshold is unpublished)."""

    skip_sources: list[str] = Field(default_factory=list)
    """Sources the quality model is not applied to."""


class PiiConfig(SpecModel):
    enabled: bool = True
    """Replace emails, IP addresses and phone numbers by special tokens (report section 2.1.2)."""

    email_token: str = "<|email|>"
    """Replacement for an email address."""

    ip_token: str = "<|ip|>"
    """Replacement for an IPv4 or IPv6 address."""

    phone_token: str = "<|phone|>"
    """Replacement for a phone number (Chinese mobile and landline, international +CC, North American)."""


class MinHashConfig(SpecModel):
    enabled: bool = True
    """Document-level near-duplicate removal with MinHash-LSH (report section 2.1.3)."""

    num_perm: int = Field(default=128, ge=8, le=1024)
    """Hash permutations per signature (the report: 128)."""

    bands: int = Field(default=25, ge=1)
    """LSH bands (our default; the report does not give bands/rows). A pair with Jaccard J becomes a
    candidate with probability 1 - (1 - J^rows)^bands: 25 x 5 gives 0.99 at J = 0.7, so the exact
    confirmation (see threshold) sees nearly every true pair; 16 x 8 gave 0.61."""

    rows: int = Field(default=5, ge=1)
    """Rows (hashes) per band; bands x rows must not exceed num_perm."""

    ngram: int = Field(default=5, ge=1)
    """Shingle size in tokens (lowercased Latin words or numbers; single CJK characters)."""

    threshold: float = Field(default=0.7, ge=0, le=1)
    """LSH candidates are confirmed only when the exact Jaccard of their two shingle sets is at least
    this (0: every candidate is a duplicate, as datatrove does). Our default."""

    seed: int = 42
    """Seeds the permutations; equal seeds give equal signatures on every rank."""

    @model_validator(mode="after")
    def _bands_fit(self) -> "MinHashConfig":
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows ({self.bands}*{self.rows}) must be <= numPerm ({self.num_perm})")
        return self


class ParagraphDedupConfig(SpecModel):
    enabled: bool = True
    """Exact paragraph dedup across documents (report section 2.1.3)."""

    delete_share: float = Field(default=0.3, ge=0, le=1)
    """Share of each group of identical paragraphs that is deleted, rounded half up (the report
    tested 10-50% and chose 30%)."""

    min_chars: int = Field(default=20, ge=1)
    """Shorter paragraphs (headings, 'Example:') are never deleted (our default)."""


class SentenceDedupConfig(SpecModel):
    enabled: bool = True
    """Sentence dedup keeping ceil(sqrt(N)) copies of a sentence seen N times (report section 2.1.3)."""

    guard_tokens: int = Field(default=16, ge=1)
    """The report's 16-gram guard (our reading): a sentence of at least this many tokens is a dedup
    unit on its own; consecutive shorter sentences of a paragraph form one unit, deduplicated only
    when the run reaches this length. Short sentences are never deleted for being common alone."""


class MixConfig(SpecModel):
    enabled: bool = True
    """Resample sources toward target token ratios (report Table 1)."""

    targets: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=lambda: dict(TABLE1_MIX))
    """Target token share per source (normalised over the sources present). Sources not named here
    count toward `other`. Default: the report's Table 1."""

    max_oversample: float = Field(default=5.0, ge=1)
    """No source is repeated more than this many times (the report: literature keeps it <= 5x)."""

    allow_downsample: bool = False
    """False: the most abundant source (relative to its target) is kept at 1x and the others are
    oversampled toward their targets up to the cap. True: hit the targets exactly, dropping documents
    of over-represented sources."""

    target_tokens: int | None = Field(default=None, ge=1)
    """Fix the output size in (estimated) tokens instead; every source is then scaled to its share."""

    seed: int = 1234
    """Seeds which documents are repeated or dropped for fractional factors."""


class OutputConfig(SpecModel):
    docs_per_file: int = Field(default=100_000, ge=1)
    """Documents per output shard `docs/part-RRRRR-NNNNN.jsonl`."""

    rejects_per_file: int = Field(default=100_000, ge=1)
    """Records per rejects shard `rejects/part-RRRRR-NNNNN.jsonl`."""

    allow_empty: bool = False
    """False: a run that keeps no document fails (after writing its report), since an empty corpus
    is almost always a wrong input or a filter set too strictly. True: an empty output succeeds."""

    keep_work: bool = False
    """Keep `_work/` (per-rank dedup artefacts) after a successful run, for debugging."""

    spill_dir: str | None = None
    """Local directory for per-pass spill files (None: the system temp dir). Needs about twice the
    rank's share of the input on local disk; memory stays bounded."""

    barrier_timeout_s: float = Field(default=3600.0, gt=0)
    """How long a rank waits for the others at a cross-shard exchange before failing."""

    barrier_poll_s: float = Field(default=1.0, gt=0)
    """Longest pause between two listings of the object store while waiting at a barrier (without
    torch.distributed); polls start at 20 ms and back off to this."""


class DataParams(SpecModel):
    input: InputConfig = Field(default_factory=InputConfig)
    """Input fields and the bad-input limits (step `input`)."""

    url_filter: UrlFilterConfig = Field(default_factory=UrlFilterConfig)
    """Step `url_filter`: URL blacklist and whitelist."""

    keywords: KeywordFilterConfig = Field(default_factory=KeywordFilterConfig)
    """Step `keywords`: sensitive-keyword filter."""

    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    """Steps `url_dedup` and `exact_dedup` (cross-shard)."""

    lang_id: LangIdConfig = Field(default_factory=LangIdConfig)
    """Steps `lang_id` and `english_with_chinese`."""

    rules: RulesConfig = Field(default_factory=RulesConfig)
    """Step `rules`: the document rules of appendix A."""

    junk: JunkConfig = Field(default_factory=JunkConfig)
    """Step `junk`: the paragraph junk classifier."""

    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Step `quality`: the quality classifier hook (off unless a model is given)."""

    pii: PiiConfig = Field(default_factory=PiiConfig)
    """Step `pii`: special tokens for emails, IPs and phone numbers."""

    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    """Step `minhash`: document-level MinHash-LSH near-duplicate removal (cross-shard)."""

    paragraph_dedup: ParagraphDedupConfig = Field(default_factory=ParagraphDedupConfig)
    """Step `paragraph_dedup` (cross-shard)."""

    sentence_dedup: SentenceDedupConfig = Field(default_factory=SentenceDedupConfig)
    """Step `sentence_dedup` (cross-shard)."""

    mix: MixConfig = Field(default_factory=MixConfig)
    """Step `mix`: per-source resampling toward target ratios (cross-shard token counts)."""

    output: OutputConfig = Field(default_factory=OutputConfig)
    """Output sharding, spill space and barrier timeout."""
