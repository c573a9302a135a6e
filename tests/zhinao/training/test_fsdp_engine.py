"""FSDP2 on two gloo ranks trains like one process: same loss curve, same weights, resumable on one
rank and on four.

Every rank trains on its share of each step's batch; FSDP averages the gradients, so each step
is the single process's full-batch step up to float rounding. The DCP checkpoint is saved the way
background saves run: staged at step SAVE_AT, written only after the next step changed the
weights (on its own gloo group). One rank and then four load it (resharding) and finish the run
like the single process, which they could not if the write had picked up the later weights.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import spawn

from zhinao.config.pretrain import PretrainParams
from zhinao.distributed import DistEnv
from zhinao.model import build_config, build_model
from zhinao.training.engine_builder import build_engine
from zhinao.training.fsdp_engine import FSDPEngine

STEPS, SAVE_AT, VOCAB = 5, 3, 96


def _params(engine: str) -> PretrainParams:
    # Chunked loss and activation checkpointing on, as a 1B+ model would train.
    return PretrainParams(
        engine=engine, lr=1e-2, warmup_steps=1, max_steps=STEPS, activation_checkpointing="full", loss_chunk_tokens=16
    )


def _batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, VOCAB, (4, 24), generator=gen) for _ in range(STEPS)]


def _engine(kind: str, rank: int, world: int):
    model = build_model(build_config("tiny", vocab_size=VOCAB, attention="sdpa"), seed=3)
    env = DistEnv(rank=rank, world_size=world, local_rank=rank)
    return build_engine(model, _params(kind), env=env, device=torch.device("cpu"), warmup=1, total=STEPS)


def _rows(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    per = len(batch) // world
    return batch[rank * per : (rank + 1) * per]


def _worker(rank: int, world: int, out: str, resume: bool) -> None:
    engine = _engine("fsdp", rank, world)
    assert isinstance(engine, FSDPEngine)
    batches, losses = _batches(), {}
    first = SAVE_AT if resume else 0
    if resume:
        engine.load(Path(out) / "merged")
    write = None
    for step in range(first, STEPS):
        losses[step + 1], _ = engine.train_step([_rows(batches[step], rank, world)])
        if write is not None:
            write()
            write = None
        if not resume and step + 1 == SAVE_AT:
            write = engine.stage(Path(out) / f"ckpt-rank-{rank}", group=dist.new_group(backend="gloo"))
    state = engine.full_state_dict()
    if rank == 0:
        torch.save(state, Path(out) / f"weights-{world}.pt")
        (Path(out) / f"losses-{world}.json").write_text(json.dumps(losses))


@pytest.mark.slow
def test_two_rank_fsdp_matches_one_process_and_resumes_on_one_and_on_four_ranks(tmp_path):
    reference = _engine("ddp", 0, 1)
    expected = {step + 1: reference.train_step([batch])[0] for step, batch in enumerate(_batches())}
    expected_weights = reference.full_state_dict()

    spawn(_worker, 2, str(tmp_path), False)
    losses = json.loads((tmp_path / "losses-2.json").read_text())
    for step, loss in expected.items():
        assert losses[str(step)] == pytest.approx(loss, rel=1e-4), step
    weights = torch.load(tmp_path / "weights-2.pt")
    assert weights.keys() == expected_weights.keys()
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-3, atol=1e-5, msg=name)

    merged = tmp_path / "merged"  # what the checkpoint manager downloads: every rank's parts in one place
    merged.mkdir()
    for rank in range(2):
        for part in (tmp_path / f"ckpt-rank-{rank}").iterdir():
            shutil.copy(part, merged / part.name)
    for world in (1, 4):
        spawn(_worker, world, str(tmp_path), True)
        resumed = json.loads((tmp_path / f"losses-{world}.json").read_text())
        assert sorted(resumed) == [str(s) for s in range(SAVE_AT + 1, STEPS + 1)], world
        for step, loss in resumed.items():
            assert loss == pytest.approx(expected[int(step)], rel=1e-4), (world, step)
        weights = torch.load(tmp_path / f"weights-{world}.pt")
        for name, value in expected_weights.items():
            torch.testing.assert_close(weights[name], value, rtol=1e-3, atol=1e-5, msg=f"{world} ranks: {name}")
