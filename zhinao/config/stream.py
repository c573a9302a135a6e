"""Settings of the token-shard writer and of the streaming reader (docs/data.md)."""

from pydantic import Field

from zhinao.config._base import SpecModel


class TokenStreamParams(SpecModel):
    shard_tokens: int = Field(default=1 << 23, ge=1)
    """Tokens per shard file the tokenize step writes (rounded down to whole sequences, at least one);
    8M tokens = 32 MiB. A rank holds one shard of each source in memory while it tokenizes."""

    shuffle_window: int = Field(default=8192, ge=1)
    """Sequences shuffled together on one rank: its share of an epoch is read in windows of this many
    consecutive sequences (of the epoch's shard order), each window in a seeded random order."""

    cache_mb: int = Field(default=512, ge=1)
    """Local disk a rank may fill with downloaded shards; the least recently read is evicted first.
    Sequences are read from disk, not kept in memory, so this bounds disk, and memory stays flat."""
