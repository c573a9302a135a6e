"""Record shards of the alignment stages on the real S3 server: the prepare step's shares, the
stream's disjoint shares, its bounded cache, and an exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from zhinao.artifacts import StageOutput
from zhinao.config.stream import RecordStreamParams
from zhinao.corpus import lines_of_rank
from zhinao.data.prepare_records import RecordSetWriter, merge_record_sets
from zhinao.data.record_shards import RecordIndex, ShardWriter, encode_shard
from zhinao.data.stream_order import PositionMismatch
from zhinao.data.token_stream import RecordStream
from zhinao.storage import open_store

N = 150
PARAMS = RecordStreamParams(shard_mb=1, shuffle_window=16, cache_mb=1)
BIG = "x" * 40_000  # ~27 records per 1 MiB shard, so every rank writes several


@pytest.fixture
def records(s3_store, tmp_path):
    """N records in 3 JSONL files (one unparsable line), prepared by 2 ranks (one after the other)."""
    src = tmp_path / "input"
    src.mkdir()
    for f in range(3):
        lines = [json.dumps({"id": i, "pad": BIG, "odd": i % 2}) for i in range(f, N, 3)]
        (src / f"part-{f}.jsonl").write_text("\n".join(lines + (["{not json"] if f == 1 else [])) + "\n")
    store = open_store(f"file://{src}")
    out = StageOutput(s3_store)
    for rank in (0, 1):
        writer = RecordSetWriter(out, ["train", "odd"], rank=rank, params=PARAMS)
        counts = Counter()
        for _key, _n, line in lines_of_rank(store, store.list(), rank=rank, world_size=2):
            try:
                r = json.loads(line)
            except ValueError:
                counts["unparsable"] += 1
                continue
            writer.add("odd" if r["odd"] else "train", r)
        writer.finish(counts)
    merge_record_sets(out, ["train", "odd"], world_size=2)
    return out


def stream(out, tmp_path, *, name="train", rank=0, world_size=1, params=PARAMS) -> RecordStream:
    cache = tmp_path / f"cache-{name}-{rank}-{world_size}"
    return RecordStream(out, name, cache, seed=3, rank=rank, world_size=world_size, params=params)


def test_shard_format_reads_back_any_record():
    writer = ShardWriter(max_bytes=25)
    full = [writer.add({"i": i}) for i in range(5)]
    shards = [s for s in full if s] + [writer.finish()]
    assert [len(s) for s in shards] == [4, 1]  # {"i":0} is 7 bytes: cut once 25 bytes are held
    raw = encode_shard(shards[0])
    offsets = [int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i in range(5)]
    assert json.loads(raw[40 + offsets[2] : 40 + offsets[3]]) == {"i": 2}
    with pytest.raises(ValueError, match="where: not a record index"):
        RecordIndex.from_json(b'{"format": "zhinao-tokens/1"}', where="where")


def test_two_ranks_prepare_every_line_once_into_named_sets(records):
    train, odd = records.read_records_index("train"), records.read_records_index("odd")
    assert train.records + odd.records == N and odd.records == N // 2
    assert train.counts == odd.counts == {"unparsable": 1}
    assert {s.key.split("/")[-1][:6] for s in train.shards} == {"r00000", "r00001"}
    # rank 0 reads files 0 and 2 (50 train records: 2 shards), rank 1 file 1 (25: 1 shard); a shard is
    # cut at the first record that fills 1 MiB, which bounds what a writer holds
    assert len(train.shards) == 3 and all(s.bytes <= (1 << 20) + len(BIG) + 100 for s in train.shards)


def test_ranks_stream_disjoint_shares_that_cover_an_epoch(records, tmp_path):
    shares = [stream(records, tmp_path, rank=r, world_size=2) for r in (0, 1)]
    read = Counter(rec["id"] for s in shares for rec in s.take(len(s)))
    assert len(shares[0]) == len(shares[1]) == 37  # 75 even ids, the last of the epoch's order dropped
    assert max(read.values()) == 1 and len(read) == 74 and all(i % 2 == 0 for i in read)
    again = stream(records, tmp_path / "again", rank=1, world_size=2)
    assert [r["id"] for r in again.take(5)] == [
        r["id"] for r in stream(records, tmp_path / "b", rank=1, world_size=2).take(5)
    ]


def test_cache_stays_bounded_and_leaves_nothing_on_disk(records, tmp_path):
    s = stream(records, tmp_path)
    s.take(2 * len(s))
    shard = max(x.bytes for x in records.read_records_index("train").shards)
    assert sum(size for _, size in s.cache._open.values()) <= max(PARAMS.cache_mb << 20, shard) + shard
    assert not list((tmp_path / "cache-train-0-1").iterdir())


def test_another_world_size_or_record_set_is_refused(records, tmp_path):
    s = stream(records, tmp_path, rank=0, world_size=2)
    s.take(3)
    with pytest.raises(PositionMismatch, match="written by 2 data-parallel ranks and this run has 1"):
        stream(records, tmp_path).load_state_dict(s.state_dict())
    with pytest.raises(
        PositionMismatch, match="75 samples with seed 4, this run has 75 with seed 3; the data or the seed changed"
    ):
        state = {**stream(records, tmp_path, name="odd").state_dict(), "seed": 4}
        stream(records, tmp_path).load_state_dict(state)


@pytest.mark.parametrize("after", [1, 4])
def test_an_elastic_stream_resumes_with_another_world_size_without_repeat_or_skip(records, tmp_path, after):
    elastic = PARAMS.model_copy(update={"elastic": True})
    two = [stream(records, tmp_path / "w2", rank=r, world_size=2, params=elastic) for r in (0, 1)]
    before = [rec["id"] for _ in range(4) for s in two for rec in s.take(5)]  # 4 steps of 5 per rank
    state = two[0].state_dict()
    assert state == two[1].state_dict() and state["sample"] == 40
    more = [stream(records, tmp_path / "wn", rank=r, world_size=after, params=elastic) for r in range(after)]
    for s in more:
        s.load_state_dict(state)
    steps = 120 // (5 * after)  # to 160 samples: past the end of the first epoch of 75
    resumed = [rec["id"] for _ in range(steps) for s in more for rec in s.take(5)]
    reference = [rec["id"] for rec in stream(records, tmp_path / "w1", params=elastic).take(160)]
    assert sorted(before + resumed) == sorted(reference)  # the global prefix: nothing repeated or skipped
    assert sorted(reference[:75]) == sorted(reference[75:150]) == list(range(0, N, 2))  # no epoch drops any


READER = """
import json, os, sys, time
from pathlib import Path
from zhinao.artifacts import StageOutput
from zhinao.config.stream import RecordStreamParams
from zhinao.data.token_stream import RecordStream

uri, work, params = sys.argv[1], Path(sys.argv[2]), RecordStreamParams.model_validate_json(sys.argv[3])
s = RecordStream(StageOutput.at(uri), "train", work / "cache", seed=3, rank=0, world_size=1, params=params)
log = open(work / "read.log", "a")
read = 0
while True:
    for r in s.take(4):
        log.write(f"{r['id']}\\n")
    log.flush()
    read += 4
    if read % 8 == 0:  # a checkpoint: the position and how many samples it covers, atomically
        (work / "ckpt.tmp").write_text(json.dumps({"read": read, "data": s.state_dict()}))
        os.replace(work / "ckpt.tmp", work / "ckpt.json")
    time.sleep(0.01)
"""


def test_a_reader_killed_with_sigkill_resumes_without_repeating_or_skipping(records, tmp_path, s3_server):
    env = {**os.environ, **s3_server.env()}
    child = subprocess.Popen(
        [sys.executable, "-c", READER, records.uri, str(tmp_path), PARAMS.model_dump_json()], env=env
    )
    ckpt = tmp_path / "ckpt.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt.exists() and json.loads(ckpt.read_text())["read"] >= 40):
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    saved = json.loads(ckpt.read_text())
    logged = (tmp_path / "read.log").read_text().split()
    before = logged[: saved["read"]]  # what the checkpoint covers; the rest is redone after resume

    resumed = stream(records, tmp_path / "resumed")
    resumed.load_state_dict(saved["data"])
    total = 3 * len(resumed) + 5  # across two epoch boundaries
    after = [str(r["id"]) for r in resumed.take(total - len(before))]

    assert len(before) >= 40 and len(logged) >= len(before)
    uninterrupted = [str(r["id"]) for r in stream(records, tmp_path / "ref").take(total)]
    assert before + after == uninterrupted
    # counted per epoch: every sample of the set exactly once in each of the first three epochs
    for e in range(3):
        epoch = Counter(uninterrupted[e * len(resumed) : (e + 1) * len(resumed)])
        assert len(epoch) == len(resumed) == 75 and max(epoch.values()) == 1
