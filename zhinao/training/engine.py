"""The ways a stage trains data-parallel: PyTorch DDP, DeepSpeed ZeRO 1-3 (here) and FSDP2 (fsdp_engine.py).

All expose the same four operations the loop needs, so stages never branch on the engine.
"""

import contextlib
import copy
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.staging import AsyncStager

from zhinao.distributed import DistEnv
from zhinao.training.chunked_loss import ChunkedLossLM

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
"""(model, micro_batch) -> scalar loss of that micro-batch."""


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def host_copy(obj: Any, reuse: Any = None, memo: dict | None = None) -> Any:
    """`obj` (nested dicts, lists, tuples) with every tensor copied into host memory; tensors shared
    within `obj` (tied weights) stay shared. Where `reuse` (an earlier copy of the same structure)
    has a tensor of the same shape and dtype in the same place, the copy goes into it."""
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            fits = isinstance(reuse, torch.Tensor) and (reuse.shape, reuse.dtype) == (obj.shape, obj.dtype)
            memo[id(obj)] = reuse.copy_(obj.detach()) if fits else obj.detach().to("cpu", copy=True)
        return memo[id(obj)]
    if isinstance(obj, dict):
        reuse = reuse if isinstance(reuse, dict) else {}
        return type(obj)((k, host_copy(v, reuse.get(k), memo)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        reuse = reuse if isinstance(reuse, list | tuple) and len(reuse) == len(obj) else [None] * len(obj)
        return type(obj)(host_copy(v, r, memo) for v, r in zip(obj, reuse, strict=True))
    return copy.deepcopy(obj)


@contextlib.contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """Tensor copies on one thread while open. A host copy is bound by memory bandwidth, which one
    thread nearly saturates; split over torch's intra-op threads, every copy is a parallel region
    whose threads wait for each other, and on a busy host (more runnable threads than cores) each
    waits, spinning, for the others to be scheduled. Measured on the 2-core bench host at load 8
    (bench/checkpoint_blocking.py's 134M model, 588 tensors, 1.61 GB): 1.07-4.72 s and 0.43-1.60
    CPU s on 2 threads, 0.36-0.44 s and 0.14 CPU s on 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class HostStager(AsyncStager):
    """Stages state dicts into host buffers kept from one checkpoint to the next (a DCP AsyncStager,
    so FSDP2's `async_save` uses it too). After the first save, staging is a copy into
    memory that is already paged in; a fresh copy faults in and zeroes every page first, which on a
    loaded host took 10x longer. The previous save's write must be done before the next `stage`:
    the session runs one save at a time."""

    _synchronize_after_execute = False  # staging is a blocking copy: nothing to wait for after

    def __init__(self) -> None:
        self._buffers: Any = None

    def stage(self, state_dict: dict) -> dict:
        with _one_intra_op_thread():
            self._buffers = host_copy(state_dict, self._buffers)
        return self._buffers

    def close(self) -> None:
        """The buffers stay for the next save."""


def write_parts(directory: Path, staged: dict[str, Any]) -> dict[str, Path]:
    """torch.save each staged object as its part file under `directory`; returns {name: file}."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, obj in staged.items():
        torch.save(obj, directory / name)
    return {name: directory / name for name in staged}


class Autocast(torch.nn.Module):
    """`module` whose forwards run under autocast to `dtype`: fp32 weights hand bf16 to attention
    (flash-attn takes nothing else) whether or not the caller is inside autocast."""

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device.type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)


def computing_in(module: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> torch.nn.Module:
    """`module` (run on `device`), its forwards computing in `dtype` (None: its weights' own precision)."""
    return module if dtype is None else Autocast(module, device, dtype)


class Engine(ABC):
    model: torch.nn.Module
    """The unwrapped model (what gets exported)."""
    fixed_world_size: str | None = None
    """Why a checkpoint this engine wrote loads only with the number of ranks that wrote it; None
    where it loads with any (DDP's state is one replicated copy, FSDP2's DCP files reshard on load)."""

    def __init__(self, env: DistEnv, device: torch.device, autocast_dtype: torch.dtype | None):
        self.env = env
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.compute_dtype = autocast_dtype
        """The precision the training forwards compute in (bf16, or None: the weights' own), however the
        engine gets there (autocast here, a sharding policy or a bf16 module in the others)."""

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @abstractmethod
    def train_step(self, micro_batches: list, loss_fn: LossFn | None = None) -> tuple[float, float]:
        """One optimizer step over the micro-batches; returns (mean loss across ranks, grad norm).

        Without `loss_fn` a micro-batch is a (B, T) tensor of token ids trained as a causal LM on
        itself (pretraining). With it, a micro-batch is whatever `loss_fn(model, batch)` takes, and
        `model` is the forward-callable wrapper (DDP / DeepSpeed engine) whose gradients sync.
        """

    @abstractmethod
    def save(self, directory: Path) -> dict[str, Path]:
        """Write this rank's share of the training state now, straight from the live state; returns
        {part name: file}."""

    @abstractmethod
    def stage(self, directory: Path, *, group: dist.ProcessGroup | None = None) -> Callable[[], dict[str, Path]]:
        """Copy this rank's share of the training state into host memory now, so that training may
        change it right after; the returned function writes that copy under `directory` and returns
        {part name: file}. It may run on another thread while training goes on: its collectives then
        use `group` (a gloo group of its own, so they never interleave with training's). The host
        buffers are reused: call the function before the next `stage`."""

    @abstractmethod
    def load(self, directory: Path) -> None:
        """Restore the state from a directory holding every rank's parts."""

    @abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (None elsewhere). Collective: call on every rank."""

    @property
    @abstractmethod
    def lr(self) -> float: ...

    @property
    @abstractmethod
    def forward_module(self) -> torch.nn.Module:
        """What a training forward calls (the DDP / DeepSpeed / FSDP wrapper): sharded weights gather there."""

    @torch.no_grad()
    def eval_loss(self, batches: list[torch.Tensor]) -> float:
        """Mean next-token loss over every rank's (B, T) token batches, weighted by tokens, in eval
        mode and without gradients. Collective: every rank calls it with the same number of batches
        (sharded weights are gathered by each forward); a batch of zero rows counts nothing."""
        module = self.forward_module
        was_training = module.training
        module.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in batches:
            rows = batch if len(batch) else batches[0][:1]  # a rank out of sequences still joins the forward
            with self._autocast():
                loss = module(input_ids=rows, labels=rows).loss
            if len(batch):
                targets = batch.size(0) * (batch.size(1) - 1)
                total += torch.tensor([float(loss) * targets, targets], dtype=torch.float64, device=self.device)
        module.train(was_training)
        if self.env.world_size > 1:
            dist.all_reduce(total)
        return float(total[0] / total[1])

    def _inference_module(self) -> torch.nn.Module:
        """What `inference` calls: the bare model, or the sharded root that gathers its weights (FSDP2)."""
        return self.model

    @contextlib.contextmanager
    def inference(self) -> Iterator[torch.nn.Module]:
        """The module for forwards outside `train_step` (evaluation, log-probs, values): in eval mode,
        without gradients, in the training precision. Under FSDP2 each forward all-gathers the
        weights block by block, so every rank must make the same calls."""
        module = self._inference_module()
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), self._autocast():
                yield module
        finally:
            module.train(was_training)

    def full_weights(self) -> contextlib.AbstractContextManager:
        """While open, `model` holds its whole weights on this rank, so ranks may run different numbers
        of forwards through it (generation stops when its rows do). Entering is collective."""
        return contextlib.nullcontext()

    def place_frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen model (reference, reward model), already on the device, placed the way this engine
        holds weights and computing in `compute_dtype` wherever it is called from: replicated here,
        under autocast as the training forwards are; sharded under FSDP2."""
        return computing_in(model, self.device, self.compute_dtype)

    def _mean_across_ranks(self, value: float) -> float:
        if self.env.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.env.world_size

    def _rng_part(self) -> dict[str, dict]:
        """This rank's RNG state as a staged part (the getters return copies)."""
        return {f"rng-rank{self.env.rank}.pt": rng_state()}

    def _load_rng(self, directory: Path) -> None:
        path = directory / f"rng-rank{self.env.rank}.pt"
        if path.exists():
            set_rng_state(torch.load(path, weights_only=False))
        else:
            log.warning(
                "no RNG state for rank %d in %s (world size changed?); keeping the seeded state",
                self.env.rank,
                directory,
            )


class DDPEngine(Engine):
    def __init__(
        self, model, optimizer, scheduler, *, env, device, autocast_dtype, grad_clip: float, loss_chunk: int = 0
    ):
        super().__init__(env, device, autocast_dtype)
        # No-op moves are skipped: FakeTensor parameters (the memory planner) cannot be swapped in place.
        self.model = model if next(model.parameters()).device == device else model.to(device)
        self.optimizer, self.scheduler, self.grad_clip = optimizer, scheduler, grad_clip
        self._stager = HostStager()
        forward = ChunkedLossLM(self.model, chunk=loss_chunk) if loss_chunk else self.model
        self.wrapped = (
            torch.nn.parallel.DistributedDataParallel(
                forward, device_ids=[device.index] if device.type == "cuda" else None
            )
            if env.world_size > 1
            else forward
        )

    def train_step(self, micro_batches, loss_fn=None):
        self.model.train()
        total = 0.0
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = self.wrapped.no_sync() if (not last and self.env.world_size > 1) else contextlib.nullcontext()
            with sync, self._autocast():
                loss = loss_fn(self.wrapped, batch) if loss_fn else self.wrapped(input_ids=batch, labels=batch).loss
                loss = loss / len(micro_batches)
            loss.backward()
            total += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip).item()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._mean_across_ranks(total), grad_norm

    def _parts(self) -> dict[str, Any]:
        parts = self._rng_part()
        if self.env.is_main:  # DDP replicas are identical: one copy of the state suffices
            parts |= {
                "model.pt": self.model.state_dict(),
                "optimizer.pt": self.optimizer.state_dict(),
                "scheduler.pt": self.scheduler.state_dict(),
            }
        return parts

    def save(self, directory):
        return write_parts(directory, self._parts())

    def stage(self, directory, *, group=None):
        staged = self._stager.stage(self._parts())
        return lambda: write_parts(directory, staged)

    def load(self, directory):
        self.model.load_state_dict(torch.load(directory / "model.pt", map_location=self.device))
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=self.device))
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt"))
        self._load_rng(directory)

    def full_state_dict(self):
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()} if self.env.is_main else None

    @property
    def lr(self):
        return self.scheduler.get_last_lr()[0]

    @property
    def forward_module(self):
        return self.wrapped


class DeepSpeedEngine(Engine):
    TAG = "state"
    fixed_world_size = "DeepSpeed ZeRO cuts the optimizer state into one partition per rank of the run that saved it"

    def __init__(
        self,
        model,
        optimizer,
        scheduler,
        *,
        config: dict,
        env,
        device,
        autocast_dtype,
        grad_clip: float,
        loss_chunk: int = 0,
    ):
        """`config`: the DeepSpeed config (deepspeed_config.py), which owns precision and clipping."""
        super().__init__(env, device, None)  # DeepSpeed owns mixed precision through its config
        self.compute_dtype = torch.bfloat16 if config["bf16"]["enabled"] else None
        import deepspeed

        forward = ChunkedLossLM(model, chunk=loss_chunk) if loss_chunk else model
        # One rank trains without a process group (zhinao.training.session); DeepSpeed needs one.
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=forward,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=config,
            dist_init_required=not dist.is_initialized(),
        )
        self.model = model
        self.zero_stage = config["zero_optimization"]["stage"]
        from zhinao.training.deepspeed_staging import StagingCheckpointEngine

        self.engine.checkpoint_engine = self._saver = StagingCheckpointEngine(self.engine._config)

    def train_step(self, micro_batches, loss_fn=None):
        self.engine.train()
        total = 0.0
        for batch in micro_batches:
            if loss_fn is not None:
                loss = loss_fn(self.engine, batch)
            else:
                loss = self.engine(input_ids=batch.to(self.engine.device), labels=batch.to(self.engine.device)).loss
            self.engine.backward(loss)
            self.engine.step()
            total += loss.item() / len(micro_batches)
        norm = self.engine.get_global_grad_norm()
        return self._mean_across_ranks(total), float(norm if norm is not None else float("nan"))

    def save(self, directory):
        return self._save(directory, staging=False)()

    def stage(self, directory, *, group=None):
        # DeepSpeed's saver reads the partitioned state straight from its buffers and runs collectives
        # on the training group, so it runs here; its checkpoint engine copies each file's state into
        # host buffers, and the files are written on the background thread (deepspeed_staging.py).
        return self._save(directory, staging=True)

    def _save(self, directory: Path, *, staging: bool) -> Callable[[], dict[str, Path]]:
        directory.mkdir(parents=True, exist_ok=True)
        self._saver.begin(staging=staging)
        self.engine.save_checkpoint(str(directory), tag=self.TAG)
        rng = host_copy(self._rng_part())

        def write() -> dict[str, Path]:
            self._saver.write_staged()
            # Each rank saves into its own directory, so every file there is this rank's part.
            parts = {str(p.relative_to(directory)): p for p in sorted(directory.rglob("*")) if p.is_file()}
            return parts | write_parts(directory, rng)

        return write

    def load(self, directory):
        self.engine.load_checkpoint(str(directory), tag=self.TAG)
        self._load_rng(directory)

    def full_state_dict(self):
        if self.zero_stage < 3:
            return {k: v.detach().cpu() for k, v in self.model.state_dict().items()} if self.env.is_main else None
        import deepspeed

        # One parameter gathered at a time: no rank ever holds the whole model on its device, and
        # only rank 0 keeps a (CPU) copy of each.
        state = {}
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            if hasattr(tensor, "ds_id"):
                with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                    if self.env.is_main:
                        state[name] = tensor.detach().cpu().clone()
            elif self.env.is_main:
                state[name] = tensor.detach().cpu()
        return state if self.env.is_main else None

    @property
    def lr(self):
        return self.engine.get_lr()[0]

    @property
    def forward_module(self):
        return self.engine
