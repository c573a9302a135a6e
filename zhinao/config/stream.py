"""Settings of the shard writers and of the streaming readers (docs/data.md)."""

from pydantic import Field

from zhinao.config._base import SpecModel


class StreamParams(SpecModel):
    shuffle_window: int = Field(default=8192, ge=1)
    """Samples shuffled together on one rank: its share of an epoch is read in windows of this many
    consecutive samples (of the epoch's shard order), each window in a seeded random order."""

    cache_mb: int = Field(default=512, ge=1)
    """Local disk a rank may fill with downloaded shards; the least recently read is evicted first.
    Samples are read from disk, not kept in memory, so this bounds disk, and memory stays flat."""

    elastic: bool = False
    """Read one global order, rank r of W taking every W-th sample, so that a checkpoint resumes
    exactly (no sample repeated or skipped) with any world size; every rank then downloads every
    shard. False: each rank reads its own contiguous share (downloads 1/W of the shards), and a
    checkpoint resumes only with the world size that wrote it."""


class TokenStreamParams(StreamParams):
    shard_tokens: int = Field(default=1 << 23, ge=1)
    """Tokens per shard file the tokenize step writes (rounded down to whole sequences, at least one);
    8M tokens = 32 MiB. A rank holds one shard of each source in memory while it tokenizes."""

    record_samples: bool = False
    """Record in each step of the metrics log the sequences this rank trained on, as `sample_ids`:
    [shard, row] pairs (shard: its place in tokens/index.json). To find the data behind a loss
    spike, or to count what a resumed run read; costs 2 numbers per sequence in the log."""


class RecordStreamParams(StreamParams):
    """The alignment stages' data (SFT rows, preference pairs, prompts): prepared once into record
    shards by every rank, then streamed like pretraining's token shards."""

    shard_mb: int = Field(default=32, ge=1)
    """Size a record shard is cut at while a rank prepares its share; it holds one shard in memory."""
