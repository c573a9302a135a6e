"""Hyperparameters of the tokenizer stage (byte-level BPE, report section 2.2)."""

from pydantic import Field

from zhinao.config._base import SpecModel


class TokenizerParams(SpecModel):
    vocab_size: int = Field(default=8192, ge=512, le=1_000_000)
    """Target vocabulary size including special tokens (the report's model uses 158,464)."""

    min_frequency: int = Field(default=2, ge=1)
    """A pair is merged only if it occurs at least this often."""

    text_field: str = "text"
    """JSON field holding the document text in the input JSONL."""

    max_documents: int | None = Field(default=None, ge=1)
    """Train on at most this many documents (None: all of them)."""
