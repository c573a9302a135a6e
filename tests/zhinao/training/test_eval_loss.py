"""The pretrain stage's in-loop validation loss on two FSDP2 gloo ranks equals one process's.

5 held-out sequences, micro-batch 2: rank 0 scores 3 of them (batches of 2 and 1), rank 1 scores 2
and then joins the second forward with nothing of its own to count (FSDP gathers weights inside
every forward, so both ranks must run as many). The mean is weighted by tokens across ranks.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gloo_ranks import spawn

from zhinao.config.pretrain import PretrainParams
from zhinao.distributed import DistEnv
from zhinao.model import build_config, build_model
from zhinao.stages.pretrain import valid_loss_fn
from zhinao.training.engine_builder import build_engine

VOCAB = 96
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=(5, 24))


def _valid_loss(engine: str, rank: int, world: int) -> float:
    model = build_model(build_config("tiny", vocab_size=VOCAB, attention="sdpa"), seed=3)
    params = PretrainParams(engine=engine, max_steps=2, warmup_steps=1, loss_chunk_tokens=16)
    env = DistEnv(rank=rank, world_size=world, local_rank=rank)
    eng = build_engine(model, params, env=env, device=torch.device("cpu"), warmup=1, total=2)
    hook = valid_loss_fn(eng, TOKENS, rank=rank, world_size=world, batch=2, device=torch.device("cpu"))
    return hook(1)["valid_loss"]


def _worker(rank: int, world: int, out: str) -> None:
    loss = _valid_loss("fsdp", rank, world)
    Path(out, f"rank{rank}.json").write_text(json.dumps(loss))


@pytest.mark.timeout(300)
def test_two_fsdp_ranks_score_the_held_out_sequences_as_one_process(tmp_path: Path) -> None:
    spawn(_worker, 2, str(tmp_path))
    ranks = [json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in range(2)]
    alone = _valid_loss("ddp", 0, 1)
    assert ranks[0] == ranks[1]  # all-reduced: every rank records the same figure
    assert ranks[0] == pytest.approx(alone, rel=1e-5)
    assert 3.5 < alone < 5.5  # an untrained model on 96 tokens: about ln(96) = 4.56
