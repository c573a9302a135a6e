"""The training loop with the causal-LM step (pretrain, longctx), a recording engine and session:
what it trains on, records, evaluates and saves."""

import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from zhinao.artifacts import StageOutput
from zhinao.config.pretrain import PretrainParams
from zhinao.data.packing import TOKEN_DTYPE
from zhinao.data.token_shards import Shard, TokenIndex, shard_bytes
from zhinao.data.token_stream import TokenStream
from zhinao.storage import open_store
from zhinao.training.causal_lm import causal_lm_step
from zhinao.training.loop import Schedule, StepResult, TrainingLoop


class RecordingEngine:
    lr = 1e-3

    def __init__(self):
        self.steps: list[list[torch.Tensor]] = []

    def train_step(self, micro_batches, loss_fn=None):
        assert loss_fn is None  # pretraining: the model's own loss
        self.steps.append(micro_batches)
        return 2.0, 0.5


class RecordingSession:
    device = torch.device("cpu")

    def __init__(self, world_size: int, resume_meta: dict):
        self.env = SimpleNamespace(is_main=True, world_size=world_size)
        self.saved: list[tuple[int, dict]] = []
        self.resume_meta = resume_meta
        self.metrics = RecordingMetrics()
        self.resumed_step = None

    def resume(self, engine):
        return dict(self.resume_meta)

    def open_metrics(self, *, flops_per_token, resumed_step):
        self.resumed_step = resumed_step
        return self.metrics

    def save_checkpoint(self, engine, step, meta, *, background):
        self.saved.append((step, meta))

    def finish_checkpoints(self):
        pass


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
def tokens(tmp_path) -> StageOutput:
    out = StageOutput(open_store(f"file://{tmp_path}/out"))
    key = out.put_token_shard("a", shard_bytes(DATA))
    out.write_tokens_index(TokenIndex(seq_len=16, vocab_size=1000, shards=[Shard(key, "a", len(DATA))]))
    return out


def run(tokens: StageOutput, start: int, *, rank: int = 0, world_size: int = 1, sp: int | None = None, saved=None):
    """The loop as pretrain (or longctx, with `sp`) drives it, resumed from checkpoint `start` (its
    meta `saved`, or one without a data position)."""
    resume_meta = saved or ({"step": start, "world_size": world_size} if start else {})
    session, engine = RecordingSession(world_size, resume_meta), RecordingEngine()
    loop = TrainingLoop(session, engine, Schedule.of(PARAMS, PARAMS.max_steps))
    meta = loop.resume()
    assert meta.get("step", 0) == start
    stream = TokenStream(
        tokens, Path(tempfile.mkdtemp()), seed=PARAMS.seed, rank=rank, world_size=world_size, params=PARAMS.stream
    )
    stream.resume(meta, samples_done=start * PARAMS.micro_batch_size * PARAMS.grad_accum_steps)
    step = causal_lm_step(engine, stream, PARAMS, device=session.device, tokens_per_step=64)
    extra = {"sequence_parallel": sp} if sp else {}
    loop.run(step, checkpoint_meta=lambda s: {**extra, "tokens": s * 64 * world_size, "data": stream.state_dict()})
    assert session.resumed_step == start
    return session, engine, session.metrics


def test_a_resumed_run_trains_on_what_the_uninterrupted_one_did(tokens):
    session, full, _ = run(tokens, 0)
    _, resumed, _ = run(tokens, 3, saved=dict(session.saved)[3])
    _, counted, _ = run(tokens, 3)  # a checkpoint without a data position: counted from its step
    assert len(resumed.steps) == len(counted.steps) == 4
    for a, b, c in zip(full.steps[3:], resumed.steps, counted.steps, strict=True):
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c, strict=True))


def test_ranks_of_a_step_read_different_sequences(tokens):
    first = [run(tokens, 0, rank=r, world_size=2)[1].steps[0] for r in (0, 1)]
    rows = [tuple(row.tolist()) for batches in first for batch in batches for row in batch]
    assert len(rows) == len(set(rows)) == 2 * PARAMS.grad_accum_steps * PARAMS.micro_batch_size


def test_records_every_step_and_checkpoints_every_n_and_at_the_end(tokens):
    session, _, metrics = run(tokens, 2, world_size=2, sp=2)
    assert [r["step"] for r in metrics.records] == [3, 4, 5, 6, 7]
    assert {(r["tokens"], r["samples"], r["loss"]) for r in metrics.records} == {(64, 4, 2.0)}
    data = [meta.pop("data") for _, meta in session.saved]
    assert session.saved == [
        (step, {"step": step, "world_size": 2, "sequence_parallel": 2, "tokens": step * 64 * 2}) for step in (3, 6, 7)
    ]
    assert list(session.saved[0][1]) == ["step", "world_size", "sequence_parallel", "tokens"]  # manifest key order
    # Each checkpoint holds the position after its step: 4 samples per rank and step, 20 per rank and epoch.
    assert [(d["epoch"], d["offset"]) for d in data] == [(0, 12), (1, 4), (1, 8)]
    assert {d["world_size"] for d in data} == {2}


def test_the_eval_hook_runs_every_n_steps_and_after_the_last():
    session = RecordingSession(1, {})
    schedule = Schedule(total_steps=5, log_every=1, checkpoint_every=10, eval_every=2)
    loop = TrainingLoop(session, RecordingEngine(), schedule)
    meta = loop.resume()
    meta["evals"] = []

    def evaluate(step):
        meta["evals"].append(step)
        return {"score": float(step)}

    loop.run(lambda i: StepResult(loss=1.0, grad_norm=0.0, tokens=8, samples=1, extra={"k": 0.5}), eval_fn=evaluate)
    assert meta["evals"] == [2, 4, 5]
    assert [r.get("score") for r in session.metrics.records] == [None, 2.0, None, 4.0, 5.0]
    assert all(r["k"] == 0.5 for r in session.metrics.records)
    # The stage's meta travels in the checkpoint (only the last step checkpoints here).
    assert session.saved == [(5, {"evals": [2, 4, 5], "step": 5, "world_size": 1})]
