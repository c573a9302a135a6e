"""Per-GPU peak memory of one training step, measured without a GPU (torchtitan's estimation idea).

The stage's real model, wrapped by the real engine (`engine_builder.build_engine`: FSDP2 sharding,
activation checkpointing, chunked loss) with the real AdamW, runs one step - forward, backward,
gradient clipping, optimizer step - on rank 0 of a fake process group of the stage's world size,
with every tensor a FakeTensor: shapes, dtypes and allocations are real, data and collectives are
not, so a 7B step at 4K costs seconds of CPU and no memory. torch's MemTracker (FSDPMemTracker for
FSDP) attributes every live byte to parameters, gradients, optimizer state, activations or
temporaries and reports the peak.

Sequence parallelism (the long-context stage): each of a group's S ranks holds T/S tokens of every
sequence, so the step runs on T/S tokens, and FSDP2 shards over all dp x sp ranks, as the stage
does. The ring's send/recv cannot run on fake tensors: attention is planned as the local causal
block of T/S tokens (the ring's kernels save the same q, k, v, output and log-sum-exp), plus the
ring's buffers of one layer in flight (`ring_buffers`).

What it does not see: the CUDA caching allocator's fragmentation and the CUDA context/NCCL buffers
(budget ~2-4 GB per GPU; `HEADROOM`), and DeepSpeed, which cannot run on fake tensors.
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker

from zhinao.distributed import DistEnv
from zhinao.model import build_model
from zhinao.training.engine_builder import autocast_dtype, build_engine, checkpoint_mode, engine_kind
from zhinao.training.fsdp_engine import FSDPEngine

CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "temporaries")
_CATEGORY = {
    "Parameter": "parameters",
    "Buffer": "parameters",
    "Sharded Param": "parameters",
    "Unsharded Param": "parameters",
    "Gradient": "gradients",
    "Sharded Grad": "gradients",
    "Unsharded Grad": "gradients",
    "Optstate": "optimizer",
    "OptState": "optimizer",
    "Activation": "activations",
    "Inputs": "activations",
    "Temp": "temporaries",
    "All Gather": "temporaries",
    "Reduce Scatter": "temporaries",
    "Other": "temporaries",
}

HEADROOM = 4 * 1024**3
"""Kept free of the plan on every GPU: CUDA context, NCCL buffers and allocator fragmentation."""


@dataclass(frozen=True)
class MemoryPlan:
    engine: str
    activation_checkpointing: str
    world_size: int
    n_params: int
    breakdown: dict[str, int]
    """Bytes per category at the moment of the step's peak (CATEGORIES)."""
    sequence_parallel: int = 1
    """Ranks one sequence is split across; world_size / sequence_parallel data-parallel groups."""
    tokens_per_rank: int = 0
    """Tokens of each sequence one rank holds (seq_len / sequence_parallel)."""

    @property
    def peak(self) -> int:
        return sum(self.breakdown.values())

    @property
    def ranks(self) -> str:
        """'8', or '8 = dp 1 x sp 8' with sequence parallelism."""
        if self.sequence_parallel == 1:
            return str(self.world_size)
        return f"{self.world_size} = dp {self.world_size // self.sequence_parallel} x sp {self.sequence_parallel}"

    def fits(self, capacity: int) -> bool:
        return self.peak + HEADROOM <= capacity


class PlanError(RuntimeError):
    """The stage cannot be planned (e.g. a DeepSpeed engine, which does not run on fake tensors)."""


@contextlib.contextmanager
def fake_process_group(world_size: int):
    """Rank 0 of `world_size` ranks whose collectives return at once (torch's test-only 'fake' backend)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the backend

    if dist.is_initialized():
        raise PlanError("a process group is already initialized in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def train_one_step(engine, batch: torch.Tensor) -> None:
    """What Engine.train_step does for one micro-batch, minus reading the loss back (fake tensors hold no values)."""
    engine.model.train()
    loss = engine.wrapped(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(engine.wrapped.parameters(), engine.grad_clip)
    engine.optimizer.step()
    engine.optimizer.zero_grad(set_to_none=True)


def ring_buffers(config, *, micro_batch: int, tokens: int, dtype: torch.dtype) -> int:
    """Bytes the ring attention holds beyond the local block attention, at one layer's backward (its
    peak; zhinao.longctx.sequence_parallel): the fp32 dQ accumulator, the fp32 dK/dV travelling with
    their block and the copy being received, and the K/V block being received in the compute dtype,
    each [micro_batch, heads, tokens, head_dim] (K/V heads repeated to the query heads)."""
    head_dim = config.hidden_size // config.num_attention_heads
    elements = micro_batch * config.num_attention_heads * tokens * head_dim
    return elements * (4 + 2 * 2 * 4 + 2 * dtype.itemsize)


def plan_training_step(
    config, params, *, world_size: int, micro_batch: int, seq_len: int, sequence_parallel: int = 1
) -> MemoryPlan:
    """Peak memory of rank 0 in one optimizer step of a causal LM of `config` trained with `params`.

    `params` is the stage's OptimParams as the job will see them (precision `bf16` for a GPU plan).
    Two steps run and the second is reported: the first creates the optimizer state.
    `sequence_parallel` S splits every sequence of `seq_len` tokens across S of the world's ranks.
    """
    if seq_len % sequence_parallel or world_size % sequence_parallel:
        raise PlanError(f"sequenceParallel {sequence_parallel} must divide seqLen {seq_len} and {world_size} ranks")
    tokens = seq_len // sequence_parallel
    with fake_process_group(world_size), FakeTensorMode():
        model = build_model(config, seed=0)
        n_params = sum(p.numel() for p in model.parameters())
        kind = engine_kind(params, n_params=n_params, world_size=world_size)
        if kind == "deepspeed":
            raise PlanError("DeepSpeed engines are not planned (they do not run on fake tensors); use engine fsdp")
        # DDP's C++ reducer cannot take fake tensors: its replica is planned as one process, plus the
        # bucket buffers the reducer keeps (a flat copy of every gradient) added below.
        env = DistEnv(rank=0, world_size=world_size if kind == "fsdp" else 1, local_rank=0)
        engine = build_engine(
            model,
            params.model_copy(update={"engine": kind}),
            env=env,
            device=torch.device("cpu"),
            warmup=1,
            total=2,
            # MemTracker counts the fused/foreach AdamW states of DTensors at their global size; the
            # per-tensor loop keeps the same state and is counted right (its step temporaries are
            # one parameter's worth at a time, the fused CUDA kernel's none).
            fused_optimizer=False,
        )
        tracker = FSDPMemTracker(engine.wrapped, engine.optimizer) if isinstance(engine, FSDPEngine) else MemTracker()
        if not isinstance(engine, FSDPEngine):
            tracker.track_external(engine.wrapped, engine.optimizer)
        batch = torch.randint(0, config.vocab_size, (micro_batch, tokens))
        with tracker:  # the first step creates the optimizer state
            train_one_step(engine, batch)
        tracker.reset_mod_stats()
        with tracker:  # entering resets the peak: the second step's is the steady state's
            train_one_step(engine, batch)
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    breakdown = dict.fromkeys(CATEGORIES, 0)
    for ref, size in peak.items():
        if ref in _CATEGORY:
            breakdown[_CATEGORY[ref]] += size
    if kind == "ddp" and world_size > 1:
        breakdown["temporaries"] += 4 * n_params  # fp32 gradient buckets
    if sequence_parallel > 1:
        compute = autocast_dtype(params.precision, torch.device("cuda")) or torch.float32
        breakdown["temporaries"] += ring_buffers(config, micro_batch=micro_batch, tokens=tokens, dtype=compute)
    return MemoryPlan(
        kind,
        checkpoint_mode(params, n_params=n_params),
        world_size,
        n_params,
        breakdown,
        sequence_parallel=sequence_parallel,
        tokens_per_rank=tokens,
    )
