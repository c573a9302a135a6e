"""Sequence parallelism under FSDP2 on a ("dp", "sp") device mesh trains like one process.

Gloo ranks on CPU: D data-parallel groups of S sequence-parallel ranks. Each group takes its own
sequences of the step's batch, each rank its zigzag shard of them; FSDP2 shards the weights over
all D x S ranks, activation checkpointing recomputes every block (the ring runs again in
backward). Loss per step and final weights equal a single process training on the whole batch
with plain attention, within fp32 rounding. After training, the first group alone evaluates the
gathered model through the ring (what the needle evaluation does) and gets the reference logits.
"""

import json

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import spawn

from zhinao.config.longctx import LongContextParams
from zhinao.distributed import DistEnv
from zhinao.longctx.sequence_parallel import (
    activate_sequence_parallel,
    init_sequence_parallel,
    sequence_parallel_lm_loss,
    shard_batch,
)
from zhinao.model import build_config, build_model
from zhinao.training.engine_builder import build_engine
from zhinao.training.fsdp_engine import FSDPEngine

STEPS, VOCAB, SEQ = 3, 96, 32


def _params(engine: str, sp: int) -> LongContextParams:
    return LongContextParams(
        engine=engine,
        lr=1e-3,
        seq_len=SEQ,
        sequence_parallel=sp,
        warmup_steps=1,
        max_steps=STEPS,
        activation_checkpointing="full",
        loss_chunk_tokens=16,
    )


def _model(attention: str = "sdpa"):
    return build_model(build_config("tiny", vocab_size=VOCAB, attention=attention, rope_theta=5e7), seed=3)


def _batches() -> list[torch.Tensor]:
    """Two sequences per step: one per data-parallel group at D = 2."""
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, VOCAB, (2, SEQ), generator=gen) for _ in range(STEPS)]


def _worker(rank: int, world: int, sp_size: int, out: str) -> None:
    torch.set_num_threads(1)
    sp = init_sequence_parallel(sp_size)
    assert sp.mesh.mesh_dim_names == ("dp", "sp") and sp.shard_mesh.size() == world
    model = _model()
    model.set_attn_implementation(activate_sequence_parallel(sp))
    env = DistEnv(rank=rank, world_size=world, local_rank=rank)
    engine = build_engine(
        model,
        _params("fsdp", sp_size),
        env=env,
        device=torch.device("cpu"),
        warmup=1,
        total=STEPS,
        shard_mesh=sp.shard_mesh,
    )
    assert isinstance(engine, FSDPEngine)
    rows = len(_batches()[0]) // sp.dp_size
    losses = []
    for batch in _batches():
        mine = batch[sp.dp_rank * rows : (sp.dp_rank + 1) * rows]
        loss, _ = engine.train_step([mine], lambda m, b: sequence_parallel_lm_loss(m, b, sp))
        losses.append(loss)
    weights = engine.full_state_dict()

    with engine.full_weights():
        if sp.dp_rank == 0:  # the other groups take no part: no FSDP collective may be left in the forward
            ids, positions, _ = shard_batch(_batches()[0], sp)
            with torch.no_grad():
                logits = engine.model(input_ids=ids, position_ids=positions).logits
            torch.save(logits, f"{out}/logits-{sp.rank}.pt")
    if rank == 0:
        torch.save(weights, f"{out}/weights.pt")
        with open(f"{out}/losses.json", "w") as f:
            json.dump(losses, f)
    dist.barrier()


@pytest.mark.slow
@pytest.mark.parametrize(("dp", "sp"), [(1, 2), (2, 2)])
def test_sequence_parallel_under_fsdp_matches_one_process(tmp_path, dp, sp):
    reference = build_engine(
        _model(),
        _params("ddp", 1),
        env=DistEnv(rank=0, world_size=1, local_rank=0),
        device=torch.device("cpu"),
        warmup=1,
        total=STEPS,
    )
    expected = [reference.train_step([batch])[0] for batch in _batches()]
    expected_weights = reference.full_state_dict()
    with torch.no_grad():
        expected_logits = reference.model(input_ids=_batches()[0]).logits

    spawn(_worker, dp * sp, sp, str(tmp_path))

    losses = json.loads((tmp_path / "losses.json").read_text())
    assert losses == pytest.approx(expected, rel=1e-5)
    weights = torch.load(tmp_path / "weights.pt")
    assert weights.keys() == expected_weights.keys()
    for name, value in expected_weights.items():
        if name.endswith("k_proj.bias"):
            # Its exact gradient is zero (a key bias shifts every score of a query row alike; the
            # softmax ignores it), so Adam turns any two implementations' rounding into lr-sized steps.
            continue
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # The first group's ranks hold zigzag shards: chunks r and 2S-1-r of 2S.
    chunk = SEQ // (2 * sp)
    for r in range(sp):
        logits = torch.load(tmp_path / f"logits-{r}.pt")
        late = 2 * sp - 1 - r
        want = torch.cat(
            [expected_logits[:, r * chunk : (r + 1) * chunk], expected_logits[:, late * chunk : (late + 1) * chunk]], 1
        )
        torch.testing.assert_close(logits, want, rtol=1e-3, atol=1e-3)
