"""The process-level services every training stage uses around its loop.

Process group and device, the engine (DDP or DeepSpeed ZeRO), metrics (Prometheus + JSONL in
object storage), resumable checkpoints, and the Hugging Face export the next stage starts from.
The loop that drives them is zhinao.training.loop; stages own only their model, data and step.
"""

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from zhinao.artifacts import StageOutput, metrics_key
from zhinao.config.runtime import StageRuntime
from zhinao.distributed import DistEnv
from zhinao.metrics import TrainingMetrics, metrics_port_from_env, peak_flops
from zhinao.storage import ObjectStore, open_store
from zhinao.training.background import BackgroundJob
from zhinao.training.engine import Engine
from zhinao.training.engine_builder import autocast_dtype, build_engine, model_construction
from zhinao.training.hf_export import write_export
from zhinao.training.process_group import leave_process_group

log = logging.getLogger(__name__)


class TrainingSession:
    def __init__(self, rt: StageRuntime, *, keep_checkpoints: int):
        self.rt = rt
        self.env = DistEnv.from_env()
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.env.local_rank)
            torch.cuda.set_device(self.device)
            # fp32 matmuls that remain under bf16 (optimizer-side, fp32 heads) run on tensor cores.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            self.device = torch.device("cpu")
        if self.env.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=30))
        self.workdir = Path(os.environ.get("ZHINAO_WORKDIR") or tempfile.mkdtemp(prefix="zhinao-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.out: ObjectStore = open_store(rt.output)
        self.output = StageOutput(self.out)
        self.checkpoints = self.output.checkpoints(keep=keep_checkpoints)
        self.metrics: TrainingMetrics | None = None
        self._saving = BackgroundJob("checkpoint-save")
        self._group: dist.ProcessGroup | None = None

    # -- collectives that degrade to no-ops in a single process
    def barrier(self, group: dist.ProcessGroup | None = None) -> None:
        if self.env.world_size > 1:
            dist.barrier(group=group)

    def gather(self, obj, *, group: dist.ProcessGroup | None = None) -> list:
        if self.env.world_size == 1:
            return [obj]
        out = [None] * self.env.world_size
        dist.all_gather_object(out, obj, group=group)
        return out

    # -- the engine every stage trains with
    def model_construction(self, params):
        """Build or load the trained model inside this (partitioned at birth under ZeRO-3)."""
        return model_construction(params, env=self.env, device=self.device)

    def build_engine(self, model, params, **kwargs) -> Engine:
        """The stage's engine on this process's place and device (see engine_builder.build_engine)."""
        return build_engine(model, params, env=self.env, device=self.device, **kwargs)

    # -- metrics
    @property
    def metrics_key(self) -> str:
        return metrics_key(self.env.rank)

    def open_metrics(self, *, flops_per_token: float | None, resumed_step: int) -> TrainingMetrics:
        """Continue the stage's JSONL log from object storage, dropping steps a restart will redo."""
        path = self.workdir / self.metrics_key
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = self.output.metrics_lines(self.env.rank)
        kept = [line for line in previous if line.strip() and json.loads(line).get("step", 0) <= resumed_step]
        path.write_text("".join(line + "\n" for line in kept))
        peak, how = peak_flops(self.device)
        log.info("MFU peak: %.3g FLOP/s (%s)", peak, how)
        self.metrics = TrainingMetrics(
            pipeline=self.rt.pipeline,
            stage=self.rt.stage,
            rank=self.env.rank,
            port=metrics_port_from_env(self.env.local_rank),
            log_path=path,
            flops_per_token=flops_per_token,
            peak_flops=peak,
        )
        return self.metrics

    def upload_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.flush()
            self.output.put_metrics(self.env.rank, self.metrics.log_path)

    # -- checkpoints
    def resume(self, engine: Engine) -> dict:
        """Load the newest valid checkpoint into `engine`; returns its meta ({} on a fresh start)."""
        loaded = self.checkpoints.load_latest(self.workdir / "ckpt-load")
        steps = self.gather(loaded.step if loaded else None)
        if len(set(steps)) != 1:
            raise RuntimeError(f"ranks disagree on the checkpoint to resume from: {steps}")
        if loaded is None:
            return {}
        saved = loaded.meta.get("world_size", self.env.world_size)
        if saved != self.env.world_size and engine.fixed_world_size is not None:
            raise SystemExit(
                f"checkpoints: step {loaded.step} of {self.output.checkpoints_url} was written by {saved} ranks and "
                f"this run has {self.env.world_size}: {engine.fixed_world_size}. Resume with {saved} ranks, or train "
                "with engine: fsdp or ddp, whose checkpoints load at any world size"
            )
        if saved != self.env.world_size:
            log.info("resuming a checkpoint of %d ranks with %d", saved, self.env.world_size)
        engine.load(loaded.dir)
        log.info("resumed from step %d of %s", loaded.step, self.output.checkpoints_url)
        return loaded.meta

    def save_checkpoint(self, engine: Engine, step: int, meta: dict, *, background: bool = False) -> float:
        """Checkpoint `step`; returns the seconds training was blocked.

        In the background, training waits only for the previous save still in flight (one at a
        time) and for the engine to copy its state into host memory; the write, the sha256 sums,
        the upload and the commit follow on a thread, and `finish_checkpoints` waits for them.
        The commit order is the same either way, so a kill mid-upload leaves `latest` on the
        previous complete checkpoint."""
        started = time.perf_counter()
        self.finish_checkpoints()
        local = self.workdir / "ckpt-save" / f"step-{step:08d}" / f"rank-{self.env.rank}"
        group = self._checkpoint_group() if background else None
        write = engine.stage(local, group=group) if background else functools.partial(engine.save, local)
        # Every rank's log of the steps up to here is stored before `latest` can name this checkpoint
        # (the gather in the commit orders it before): a rank lost right after the commit makes the
        # restart resume from here, and the log must not lose the steps it will not redo. A copy,
        # because training goes on appending to the log while the upload runs.
        log_copy = self._metrics_copy(local.parent / f"metrics-rank-{self.env.rank}.jsonl")
        blocking = time.perf_counter() - started

        def write_and_commit() -> tuple[int, float, float]:
            parts = write()
            sums = self.checkpoints.upload_parts(step, parts)
            if log_copy is not None:
                self.output.put_metrics(self.env.rank, log_copy)
            merged: dict[str, str] = {}
            for rank_sums in self.gather(sums, group=group):
                merged.update(rank_sums)
            if self.env.is_main:
                self.checkpoints.commit(step, merged, meta)
            self.barrier(group)  # nobody moves on until `latest` names a complete checkpoint
            for path in [*parts.values(), log_copy]:
                if path is not None:
                    path.unlink(missing_ok=True)
            return step, time.perf_counter() - started, blocking

        if background:
            self._saving.start(write_and_commit)
            return blocking
        step, seconds, _ = write_and_commit()
        self._record_checkpoint((step, seconds, seconds))  # training waited for all of it
        return seconds

    def finish_checkpoints(self) -> None:
        """Wait for the checkpoint save in flight, if any, to be committed (raises its failure)."""
        done = self._saving.wait()
        if done is not None:
            self._record_checkpoint(done)

    def _record_checkpoint(self, done: tuple[int, float, float]) -> None:
        step, seconds, blocking = done
        if self.metrics is not None:
            self.metrics.record_checkpoint(seconds, step, blocking_seconds=blocking)
        self.upload_metrics()

    def _checkpoint_group(self) -> dist.ProcessGroup | None:
        """A gloo group for the collectives of background saves (host-memory tensors; a group of
        their own so they never interleave with training's). Created at the first save, which every
        rank reaches at the same step; None without a process group (one DDP process)."""
        if self._group is None and dist.is_initialized():
            self._group = dist.new_group(backend="gloo")
        return self._group

    def _metrics_copy(self, dest: Path) -> Path | None:
        if self.metrics is None:
            return None
        self.metrics.flush()
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.metrics.log_path, dest)
        return dest

    # -- hand-off to the next stage
    def export_hf(self, engine: Engine, params, *, tokenizer_dir: Path | None) -> str | None:
        """Sharded safetensors + index + config (+ tokenizer) under <output>/hf/, loadable with
        from_pretrained, in `params.export_dtype` with shards of at most `params.export_shard_mb`.
        Collective: the engine gathers the weights into rank 0's host memory only."""
        state = engine.full_state_dict()
        if not self.env.is_main:
            return None
        dtype = autocast_dtype(params.precision if params.export_dtype == "auto" else params.export_dtype, self.device)
        # A model made of several (PPO's policy + critic) says which of them is exported.
        model = engine.model
        if hasattr(model, "exported"):
            model, state = model.exported(state)
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            write_export(
                state,
                model,
                Path(tmp),
                dtype=dtype or torch.float32,
                max_shard_bytes=params.export_shard_mb * 10**6,
            )
            del state
            if tokenizer_dir is not None:
                for path in tokenizer_dir.iterdir():
                    (Path(tmp) / path.name).write_bytes(path.read_bytes())
            return self.output.put_hf(Path(tmp))

    def close(self) -> None:
        if self.metrics is not None:
            self.upload_metrics()
            self.metrics.close()
        if self.env.world_size > 1:
            leave_process_group()
