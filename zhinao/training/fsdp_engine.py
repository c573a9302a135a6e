"""PyTorch FSDP2: every transformer block sharded across the ranks, torchtitan-style.

Each block is its own `fully_shard` unit (all-gathered just before its forward and backward,
resharded after), the root unit holds the embeddings, final norm and lm_head. Parameters are
stored sharded in fp32 (the optimizer's master copy), cast to bf16 for compute by the
mixed-precision policy, and gradients are reduce-scattered in fp32. Checkpoints are
torch.distributed.checkpoint (DCP) files: every rank writes and reads only its shards, and a
checkpoint saved with N ranks loads with M (DCP reshards on load).
"""

import contextlib
from collections.abc import Callable

import torch
import torch.distributed.checkpoint as dcp
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from zhinao.model import transformer_blocks
from zhinao.training.chunked_loss import ChunkedLossLM
from zhinao.training.engine import Engine, HostStager, host_copy, write_parts

OptimizerFactory = Callable[[torch.nn.Module], tuple[torch.optim.Optimizer, object]]
"""model with sharded parameters -> (optimizer, scheduler): built after sharding, over the sharded parameters."""


class FSDPEngine(Engine):
    def __init__(
        self,
        model,
        make_optimizer: OptimizerFactory,
        *,
        env,
        device,
        autocast_dtype,
        grad_clip: float,
        loss_chunk: int = 0,
        mesh: DeviceMesh | None = None,
    ):
        """mesh: the 1-D mesh to shard over (default: every rank; sequence parallelism passes its
        "dp" x "sp" flattened one, zhinao.longctx.sequence_parallel)."""
        # Mixed precision comes from the sharding policy (bf16 compute copies), not from autocast.
        super().__init__(env, device, None)
        self.compute_dtype = autocast_dtype
        self.model, self.grad_clip = model, grad_clip
        # The mesh holds real rank numbers even while the memory planner runs under FakeTensorMode.
        if mesh is None:
            with unset_fake_temporarily():
                mesh = init_device_mesh(device.type, (env.world_size,))
        self.mesh = mesh
        policy = MixedPrecisionPolicy(param_dtype=autocast_dtype, reduce_dtype=torch.float32)
        self.wrapped = ChunkedLossLM(model, chunk=loss_chunk) if loss_chunk else model
        _shard(model, self.wrapped, self.mesh, policy)
        # FSDP2 picks its root at the first forward; generation may first run a submodule (PPO's
        # policy inside the actor-critic root), which would then claim to be the root.
        self.wrapped._get_fsdp_state()._lazy_init()
        self.optimizer, self.scheduler = make_optimizer(model)  # its parameters are the shards now
        self._stager = HostStager()

    def train_step(self, micro_batches, loss_fn=None):
        self.model.train()
        total = 0.0
        for i, batch in enumerate(micro_batches):
            # Gradients are reduce-scattered once, after the last micro-batch.
            self.wrapped.set_requires_gradient_sync(i == len(micro_batches) - 1)
            loss = loss_fn(self.wrapped, batch) if loss_fn else self.wrapped(input_ids=batch, labels=batch).loss
            loss = loss / len(micro_batches)
            loss.backward()
            total += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), self.grad_clip)
        grad_norm = (norm.full_tensor() if isinstance(norm, DTensor) else norm).item()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._mean_across_ranks(total), grad_norm

    def _state(self) -> dict:
        return {
            "model": get_model_state_dict(self.wrapped),
            "optimizer": get_optimizer_state_dict(self.wrapped, self.optimizer),
        }

    def _host_parts(self) -> dict:
        """What travels next to DCP's files: this rank's RNG, and the scheduler (rank 0)."""
        parts = self._rng_part()
        if self.env.is_main:
            parts["scheduler.pt"] = self.scheduler.state_dict()
        return parts

    @staticmethod
    def _shards(directory):
        return {p.name: p for p in sorted(directory.iterdir()) if p.is_file()}

    def save(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        # Each rank passes its own directory: its shard file goes there, rank 0 adds .metadata.
        dcp.save(self._state(), checkpoint_id=directory)
        return self._shards(directory) | write_parts(directory, self._host_parts())

    def stage(self, directory, *, group=None):
        directory.mkdir(parents=True, exist_ok=True)
        # DCP stages this rank's shards into the stager's host buffers, then writes them on its own
        # thread, its collectives on `group` (gloo: DCP's background save needs a CPU backend).
        written = dcp.async_save(self._state(), checkpoint_id=directory, process_group=group, async_stager=self._stager)
        staged = host_copy(self._host_parts())

        def write():
            written.result()
            return self._shards(directory) | write_parts(directory, staged)

        return write

    def load(self, directory):
        state = self._state()
        dcp.load(state, checkpoint_id=directory)
        set_model_state_dict(self.wrapped, state["model"])
        set_optimizer_state_dict(self.wrapped, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt"))
        self._load_rng(directory)

    def full_state_dict(self):
        # Gathered block by block into rank 0's host memory; the other ranks never hold a full copy.
        state = get_model_state_dict(self.wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.env.is_main:
            return None
        prefix = "lm." if self.wrapped is not self.model else ""
        return {k.removeprefix(prefix): v for k, v in state.items()}

    @property
    def lr(self):
        return self.scheduler.get_last_lr()[0]

    @property
    def forward_module(self):
        return self.wrapped

    def _inference_module(self):
        return self.wrapped  # the root: a call to the bare model would skip gathering the root's weights

    @contextlib.contextmanager
    def full_weights(self):
        # One all-gather per unit for a whole decode loop, instead of gathering every block for every
        # token in lockstep with the other ranks: ranks then decode their own prompts independently.
        units = [m for m in self.wrapped.modules() if isinstance(m, FSDPModule)]
        blocks = [u for u in units if u is not self.wrapped]
        for unit in blocks:
            unit.set_reshard_after_forward(False, recurse=False)
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
            for unit in blocks:
                unit.set_reshard_after_forward(True, recurse=False)

    def place_frozen(self, model):
        # No optimizer state and no gradients: its weights are all it has, sharded like the policy's
        # and gathered in the policy's compute dtype (fp32-held weights too), so that a reference held
        # as the policy is computes exactly as the policy does.
        _shard(model, model, self.mesh, MixedPrecisionPolicy(param_dtype=self.compute_dtype))
        return model


def _shard(model: torch.nn.Module, root: torch.nn.Module, mesh, policy: MixedPrecisionPolicy) -> None:
    """Every transformer block its own unit, the rest (embeddings, norms, heads) in `root`'s."""
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(root, mesh=mesh, mp_policy=policy)
