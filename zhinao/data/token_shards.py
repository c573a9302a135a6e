"""Packed token sequences in a stage output: (n, seqLen) .npy shards listed by tokens/index.json.

Pretrain writes them from a corpus, longctx from a corpus plus synthetic long QA; both train from
`load_tokens`, and a later stage can read another stage's shards (pretrain `inputs.tokens`).
"""

import io
from pathlib import Path

import numpy as np

from zhinao.artifacts import StageOutput
from zhinao.data.packing import TOKEN_DTYPE


def put_shard(out: StageOutput, name: str, seqs: np.ndarray, *, source: str) -> dict:
    """Store one shard; returns its entry for the index."""
    buf = io.BytesIO()
    np.save(buf, seqs)
    key = out.put_token_shard(name, buf.getvalue())
    return {"key": key, "source": source, "sequences": int(len(seqs)), "tokens": int(seqs.size)}


def load_tokens(out: StageOutput, dest: Path) -> np.ndarray:
    """Every shard of the index, concatenated (memory-mapped while reading)."""
    index = out.read_tokens_index()
    dest.mkdir(parents=True, exist_ok=True)
    arrays = [np.load(out.fetch_token_shard(shard["key"], dest), mmap_mode="r") for shard in index["shards"]]
    return np.concatenate(arrays).astype(TOKEN_DTYPE, copy=False)
