"""Under DeepSpeed ZeRO-3 the model is born partitioned: after construction each of two gloo ranks
holds only its half of every parameter, and training from there is the single process's run.

The stages build their model inside `model_construction` (zero.Init through transformers), so the
whole fp32 model never exists on one rank. transformers then initialises module by module into the
partitions: the same distribution as the plain constructor, other draws (the constructor's default
inits are skipped). From those initial weights the two ranks' loss per step and final weights are
those of one process training on the whole batch.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from gloo_ranks import spawn

from zhinao.config.pretrain import PretrainParams
from zhinao.distributed import DistEnv
from zhinao.model import build_config, build_model
from zhinao.training import deepspeed_config
from zhinao.training.engine import DeepSpeedEngine
from zhinao.training.engine_builder import build_engine, model_construction

STEPS, VOCAB = 4, 96
CPU = torch.device("cpu")


def _params(**kw) -> PretrainParams:
    return PretrainParams(lr=1e-2, warmup_steps=1, max_steps=STEPS, loss_chunk_tokens=16, **kw)


def _batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, VOCAB, (4, 24), generator=gen) for _ in range(STEPS)]


def _model():
    return build_model(build_config("tiny", vocab_size=VOCAB, attention="sdpa"), seed=3)


def _worker(rank: int, world: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # what DeepSpeed reads
    # Every parameter partitioned, however small, as the 7B's are: the lm_head the chunked loss reads
    # outside lm_head's own forward included.
    deepspeed_config.PERSISTENCE_THRESHOLD = 0
    env, params = DistEnv(rank=rank, world_size=world, local_rank=rank), _params(zero_stage=3)
    with model_construction(params, env=env, device=CPU):
        model = _model()
    held = {name: (p.numel(), p.ds_tensor.numel(), p.ds_numel) for name, p in model.named_parameters()}
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        if rank == 0:
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, Path(out) / "initial.pt")
    engine = build_engine(model, params, env=env, device=CPU, warmup=1, total=STEPS)
    assert isinstance(engine, DeepSpeedEngine)
    per = 4 // world
    losses = [engine.train_step([batch[rank * per : (rank + 1) * per]])[0] for batch in _batches()]
    state = engine.full_state_dict()
    if rank == 0:
        torch.save(state, Path(out) / "final.pt")
    (Path(out) / f"rank-{rank}.json").write_text(json.dumps({"held": held, "losses": losses}))


@pytest.mark.slow
def test_zero3_builds_the_model_partitioned_and_trains_like_one_process(tmp_path):
    spawn(_worker, 2, str(tmp_path))

    model = _model()
    model.load_state_dict(torch.load(tmp_path / "initial.pt"))
    env = DistEnv(rank=0, world_size=1, local_rank=0)
    reference = build_engine(model, _params(engine="ddp"), env=env, device=CPU, warmup=1, total=STEPS)
    expected = [reference.train_step([batch])[0] for batch in _batches()]
    expected_weights = reference.full_state_dict()
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank["held"].keys() == expected_weights.keys()
        for name, (placeholder, partition, full) in rank["held"].items():
            # Nothing but this rank's partition was ever materialised for the module's parameters.
            assert placeholder == 0 and partition == math.ceil(full / 2), name
            assert full == expected_weights[name].numel(), name
        assert rank["losses"] == pytest.approx(expected, rel=1e-4)
    weights = torch.load(tmp_path / "final.pt")
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-3, atol=1e-5, msg=name)
