"""The distributed tokenize step and the token stream, on the real S3 server: shares, bounds, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from zhinao.artifacts import StageOutput
from zhinao.config.stream import TokenStreamParams
from zhinao.corpus import read_documents
from zhinao.data.stream_order import PositionMismatch
from zhinao.data.token_shards import WIRE_DTYPE
from zhinao.data.token_stream import TokenStream
from zhinao.data.tokenize_shards import merge_parts, tokenize_share
from zhinao.storage import open_store
from zhinao.tokenizer import load as load_tokenizer

SEQ_LEN = 32
PARAMS = TokenStreamParams(shard_tokens=SEQ_LEN * 64, shuffle_window=24, cache_mb=1)


@pytest.fixture
def tokens(s3_store, stage_assets):
    """The stage corpus tokenized by 2 ranks (one after the other) into s3_store."""
    tokenizer = load_tokenizer(Path(stage_assets["tokenizer"].removeprefix("file://")))
    corpus = open_store(stage_assets["corpus"])
    out = StageOutput(s3_store)
    for rank in (0, 1):
        tokenize_share(corpus, tokenizer, out, seq_len=SEQ_LEN, params=PARAMS, rank=rank, world_size=2)
    merge_parts(out, world_size=2, where=corpus.uri)
    return out


def stream(store, tmp_path, *, rank=0, world_size=1, params=PARAMS) -> TokenStream:
    return TokenStream(store, tmp_path / f"cache-{rank}", seed=5, rank=rank, world_size=world_size, params=params)


def all_sequences(tokens: StageOutput) -> Counter:
    rows = Counter()
    for shard in tokens.read_tokens_index().shards:
        data = np.frombuffer(tokens.store.get_bytes(shard.key), dtype=WIRE_DTYPE).reshape(-1, SEQ_LEN)
        rows.update(r.tobytes() for r in data)
    return rows


def test_two_ranks_tokenize_every_document_once_into_full_shards(tokens, stage_assets):
    index = tokens.read_tokens_index()
    tokenizer = load_tokenizer(Path(stage_assets["tokenizer"].removeprefix("file://")))
    docs = list(read_documents(open_store(stage_assets["corpus"])))
    sources = {d.source for d in docs}
    assert index.documents == len(docs)
    assert {s.key.split("-r")[1][:5] for s in index.shards} == {"00000", "00001"}
    # Every shard is full but each (rank, source)'s last one; only those tails' part-sequences are lost.
    short = [s for s in index.shards if s.sequences != PARAMS.shard_tokens // SEQ_LEN]
    assert len(short) <= 2 * len(sources)
    stream_tokens = sum(
        len(ids) + 1 for ids in tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    )
    assert 0 <= stream_tokens - index.sequences * SEQ_LEN < 2 * len(sources) * SEQ_LEN
    assert sum(all_sequences(tokens).values()) == index.sequences


def test_ranks_stream_disjoint_shares_of_one_epoch(tokens, tmp_path):
    everything = all_sequences(tokens)
    shares = [stream(tokens, tmp_path, rank=r, world_size=2) for r in (0, 1)]
    read = Counter(row.tobytes() for s in shares for row in s.take(len(s)))
    assert sum(read.values()) == 2 * len(shares[0]) == sum(everything.values()) // 2 * 2
    assert not read - everything  # nothing read twice beyond its copies in the corpus


def test_disk_and_downloads_stay_bounded(tokens, tmp_path):
    s = stream(tokens, tmp_path, rank=0, world_size=2)
    s.take(len(s))
    shard_bytes = PARAMS.shard_tokens * WIRE_DTYPE.itemsize
    assert sum(size for _, size in s.cache._open.values()) <= max(PARAMS.cache_mb << 20, shard_bytes)
    assert (
        s.cache.downloads <= len(tokens.read_tokens_index().shards) // 2 + 2
    )  # its half of the shards, plus the edges
    assert not list((tmp_path / "cache-0").iterdir())  # open descriptors only: a crash leaves nothing behind


def test_resuming_with_another_world_size_is_refused(tokens, tmp_path):
    s = stream(tokens, tmp_path, rank=0, world_size=2)
    s.take(3)
    with pytest.raises(PositionMismatch, match="written by 2 data-parallel ranks and this run has 1"):
        stream(tokens, tmp_path).load_state_dict(s.state_dict())


READER = """
import json, os, sys, time
from pathlib import Path
from zhinao.artifacts import StageOutput
from zhinao.config.stream import TokenStreamParams
from zhinao.data.token_stream import TokenStream
from zhinao.artifacts import StageOutput

uri, work, params = sys.argv[1], Path(sys.argv[2]), TokenStreamParams.model_validate_json(sys.argv[3])
s = TokenStream(StageOutput.at(uri), work / "cache", seed=5, rank=0, world_size=1, params=params)
log = open(work / "read.log", "a")
read = 0
while True:
    for row in s.take(3):
        log.write(row.tobytes().hex() + "\\n")
    log.flush()
    read += 3
    if read % 6 == 0:  # a checkpoint: the position and how many samples it covers, atomically
        (work / "ckpt.tmp").write_text(json.dumps({"read": read, "data": s.state_dict()}))
        os.replace(work / "ckpt.tmp", work / "ckpt.json")
    time.sleep(0.01)
"""


def test_a_reader_killed_with_sigkill_resumes_without_repeating_or_skipping(tokens, tmp_path, s3_server):
    env = {**os.environ, **s3_server.env()}
    child = subprocess.Popen(
        [sys.executable, "-c", READER, tokens.uri, str(tmp_path), PARAMS.model_dump_json()], env=env
    )
    ckpt = tmp_path / "ckpt.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt.exists() and json.loads(ckpt.read_text())["read"] >= 30):
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    saved = json.loads(ckpt.read_text())
    before = (tmp_path / "read.log").read_text().split()[: saved["read"]]  # what the checkpoint covers

    resumed = stream(tokens, tmp_path / "resumed")
    resumed.load_state_dict(saved["data"])
    total = 2 * len(resumed) + 7  # across an epoch boundary
    after = [row.tobytes().hex() for row in resumed.take(total - len(before))]

    uninterrupted = [row.tobytes().hex() for row in stream(tokens, tmp_path / "ref").take(total)]
    assert len(before) >= 30
    assert before + after == uninterrupted
