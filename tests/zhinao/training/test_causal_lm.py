"""The pretrain/longctx step loop with a recording engine and session: what it trains on, records and saves."""

from types import SimpleNamespace

import numpy as np
import torch

from zhinao.config.pretrain import PretrainParams
from zhinao.data.packing import TOKEN_DTYPE
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


def run(start: int, *, rank: int = 0, world_size: int = 1, meta: dict | None = None):
    session, engine, metrics = RecordingSession(world_size), RecordingEngine(), RecordingMetrics()
    train_steps(
        session,
        engine,
        metrics,
        DATA,
        PARAMS,
        start=start,
        rank=rank,
        world_size=world_size,
        tokens_per_step=64,
        meta=meta,
    )
    return session, engine, metrics


def test_a_resumed_run_trains_on_what_the_uninterrupted_one_did():
    _, full, _ = run(0)
    _, resumed, _ = run(4)
    assert len(resumed.steps) == 3
    for a, b in zip(full.steps[4:], resumed.steps, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_ranks_of_a_step_read_different_sequences():
    first = [run(0, rank=r, world_size=2)[1].steps[0] for r in (0, 1)]
    rows = [tuple(row.tolist()) for batches in first for batch in batches for row in batch]
    assert len(rows) == len(set(rows)) == 2 * PARAMS.grad_accum_steps * PARAMS.micro_batch_size


def test_records_every_step_and_checkpoints_every_n_and_at_the_end():
    session, _, metrics = run(2, world_size=2, meta={"sequence_parallel": 2})
    assert [r["step"] for r in metrics.records] == [3, 4, 5, 6, 7]
    assert {(r["tokens"], r["samples"], r["loss"]) for r in metrics.records} == {(64, 4, 2.0)}
    assert session.saved == [
        (step, {"step": step, "world_size": 2, "sequence_parallel": 2, "tokens": step * 64 * 2}) for step in (3, 6, 7)
    ]
    assert list(session.saved[0][1]) == ["step", "world_size", "sequence_parallel", "tokens"]  # manifest key order
