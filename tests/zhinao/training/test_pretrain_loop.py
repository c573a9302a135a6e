"""The pretrain/longctx step loop with a recording engine and session: what it trains on, records and saves."""

import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from zhinao.config.pretrain import PretrainParams
from zhinao.data.packing import TOKEN_DTYPE
from zhinao.data.token_shards import INDEX_KEY, Shard, TokenIndex, shard_bytes
from zhinao.data.token_stream import TokenStream
from zhinao.storage import open_store
from zhinao.training.pretrain_loop import train_steps


class RecordingEngine:
    lr = 1e-3

    def __init__(self):
        self.steps: list[list[torch.Tensor]] = []

    def train_step(self, micro_batches):
        self.steps.append(micro_batches)
        return 2.0, 0.5


class RecordingSession:
    device = torch.device("cpu")

    def __init__(self, world_size: int):
        self.env = SimpleNamespace(is_main=True, world_size=world_size)
        self.saved: list[tuple[int, dict]] = []

    def save_checkpoint(self, engine, step, meta):
        self.saved.append((step, meta))


class RecordingMetrics:
    def __init__(self):
        self.records: list[dict] = []

    def record_step(self, **record):
        self.records.append(record)


PARAMS = PretrainParams(
    seq_len=16, micro_batch_size=2, grad_accum_steps=2, max_steps=7, warmup_steps=1, checkpoint_every=3
)
DATA = np.arange(40 * 16, dtype=TOKEN_DTYPE).reshape(40, 16)


@pytest.fixture
def tokens(tmp_path):
    store = open_store(f"file://{tmp_path}/out")
    store.put_bytes("tokens/a.bin", shard_bytes(DATA))
    store.put_bytes(
        INDEX_KEY, TokenIndex(seq_len=16, vocab_size=1000, shards=[Shard("tokens/a.bin", "a", 40)]).to_json()
    )
    return store


def run(
    tokens, start: int, *, rank: int = 0, world_size: int = 1, meta: dict | None = None, resume: dict | None = None
):
    session, engine, metrics = RecordingSession(world_size), RecordingEngine(), RecordingMetrics()
    stream = TokenStream(
        tokens,
        Path(tempfile.mkdtemp()) / f"cache-{rank}",
        seed=PARAMS.seed,
        rank=rank,
        world_size=world_size,
        params=PARAMS.stream,
    )
    stream.resume(resume or {}, samples_done=start * PARAMS.micro_batch_size * PARAMS.grad_accum_steps)
    train_steps(session, engine, metrics, stream, PARAMS, start=start, tokens_per_step=64, meta=meta)
    return session, engine, metrics


def test_a_resumed_run_trains_on_what_the_uninterrupted_one_did(tokens):
    session, full, _ = run(tokens, 0)
    saved = dict(session.saved)[3]
    _, resumed, _ = run(tokens, 3, resume=saved)
    _, from_steps, _ = run(tokens, 3)  # a checkpoint without a saved position: counted from its step
    assert len(resumed.steps) == len(from_steps.steps) == 4
    for a, b, c in zip(full.steps[3:], resumed.steps, from_steps.steps, strict=True):
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c, strict=True))


def test_ranks_of_a_step_read_different_sequences(tokens):
    first = [run(tokens, 0, rank=r, world_size=2)[1].steps[0] for r in (0, 1)]
    rows = [tuple(row.tolist()) for batches in first for batch in batches for row in batch]
    assert len(rows) == len(set(rows)) == 2 * PARAMS.grad_accum_steps * PARAMS.micro_batch_size


def test_records_every_step_and_checkpoints_every_n_and_at_the_end(tokens):
    session, _, metrics = run(tokens, 2, world_size=2, meta={"sequence_parallel": 2})
    assert [r["step"] for r in metrics.records] == [3, 4, 5, 6, 7]
    assert {(r["tokens"], r["samples"], r["loss"]) for r in metrics.records} == {(64, 4, 2.0)}
    data = [meta.pop("data") for _, meta in session.saved]
    assert session.saved == [
        (step, {"step": step, "world_size": 2, "sequence_parallel": 2, "tokens": step * 64 * 2}) for step in (3, 6, 7)
    ]
    # Each checkpoint holds the position after its step: 4 samples per rank and step, 20 per rank and epoch.
    assert [(d["epoch"], d["offset"]) for d in data] == [(0, 12), (1, 4), (1, 8)]
    assert {d["world_size"] for d in data} == {2}
