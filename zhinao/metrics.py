"""Training metrics: Prometheus gauges/counters plus a JSONL log carrying the same values.

Every training process (pretrain, SFT, RM, RLHF) owns one `TrainingMetrics`. Each call to
`record_step` updates the Prometheus series (labelled pipeline, stage, rank) and appends one JSON
object to a local JSONL file, flushed immediately, which the stage uploads to object storage at
checkpoints and at the end. `docs/metrics.md` lists every series.

torch is imported lazily (only `peak_flops` and the CUDA memory gauges use it), so this module
imports cleanly in images without torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

ENV_PEAK_FLOPS = "ZHINAO_PEAK_FLOPS"
ENV_METRICS_ADDR = "ZHINAO_METRICS_ADDR"
DEFAULT_METRICS_ADDR = "0.0.0.0"

LABELS = ("pipeline", "stage", "rank")
PICK_FREE_PORT = -1
"""Pass as `port` to bind an ephemeral port (read it back from `TrainingMetrics.port`)."""

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s.
# Matched as substrings of torch.cuda.get_device_name(), first match wins (so H200 before H100
# would not matter: both are the same figure; A100 covers the 40 GB and 80 GB SXM parts).
_CUDA_PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)

_CHECKPOINT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))

_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


# --------------------------------------------------------------------------------------- FLOPs


def flops_per_token(*, n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of a decoder-only transformer.

    Convention: ``6 * N + 12 * L * d * T``, as in the PaLM paper (Chowdhery et al. 2022,
    appendix B) and nanoGPT's ``estimate_mfu``.

    * ``N`` (``n_params``) is the number of parameters that take part in matrix multiplies:
      every attention and MLP weight of every layer **plus the lm_head** (the output projection
      to the vocabulary is a real ``d x V`` matmul per token). It excludes the input token
      embedding (a table lookup, no FLOPs), position embeddings, norms and biases (negligible
      element-wise work). With tied input/output embeddings, count the matrix once: it is used
      as the lm_head. A matmul with a ``k x n`` weight costs ``2kn`` FLOPs per token forward and
      twice that backward (grads w.r.t. input and weight), hence ``6N``.
    * ``12 * L * d * T`` is the attention score and value matmuls (``QK^T`` and ``AV``): each is
      ``2 * T * d`` FLOPs per token per layer forward, ``4 T d`` together, times 3 for
      forward + backward. ``L`` = layers, ``d`` = hidden size (heads x head_dim), ``T`` = sequence
      length.
    * The full ``T x T`` attention matrix is counted: the causal mask's halving is NOT applied,
      matching PaLM/nanoGPT so MFU figures compare with published ones. Activation
      recomputation (gradient checkpointing) is NOT counted either: MFU measures useful model
      FLOPs, not the hardware FLOPs actually executed.
    """
    for name, value in (("n_params", n_params), ("n_layers", n_layers), ("hidden", hidden), ("seq_len", seq_len)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    return 6.0 * n_params + 12.0 * n_layers * hidden * seq_len


_measured_lock = threading.Lock()
_measured: dict[str, float] = {}


def _measure_matmul_flops(device: Any, dtype: Any, *, n: int = 1024, seconds: float = 0.3) -> float:
    """Achieved FLOP/s of repeated n x n matmuls on `device` for about `seconds` (after a warm-up)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    torch.matmul(a, b)  # warm-up: thread pool / kernel selection
    sync()
    iters = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        torch.matmul(a, b)
        iters += 1
        if iters % 4 == 0 or iters < 4:
            sync()
            elapsed = time.perf_counter() - start
    sync()
    elapsed = time.perf_counter() - start
    return 2.0 * n**3 * iters / elapsed


def _measured_peak(device: Any, dtype_name: str) -> float:
    import torch

    key = f"{device}:{dtype_name}"
    with _measured_lock:
        if key not in _measured:
            _measured[key] = _measure_matmul_flops(device, getattr(torch, dtype_name))
        return _measured[key]


def peak_flops(device: Any) -> tuple[float, str]:
    """Peak FLOP/s of one `device` (a ``torch.device`` or string) and how it was obtained.

    Order: the ``ZHINAO_PEAK_FLOPS`` environment variable (a float, FLOP/s) overrides everything;
    a CUDA device whose name contains H100/H200 (989e12), A100 (312e12) or L40S (362e12) uses the
    dense bf16 datasheet figure; any other CUDA device, and the CPU, is measured once per process:
    the throughput of 1024 x 1024 matmuls for ~0.3 s (bf16 on CUDA, fp32 on CPU). A measured
    figure is achieved, not datasheet, throughput, so MFU against it reads high; set
    ``ZHINAO_PEAK_FLOPS`` for unknown accelerators.
    """
    env = os.environ.get(ENV_PEAK_FLOPS, "").strip()
    if env:
        try:
            value = float(env)
        except ValueError:
            raise ValueError(f"{ENV_PEAK_FLOPS}={env!r} is not a number of FLOP/s") from None
        if not value > 0:
            raise ValueError(f"{ENV_PEAK_FLOPS}={env!r} must be > 0")
        return value, f"env {ENV_PEAK_FLOPS}"

    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for needle, value in _CUDA_PEAK_BF16:
            if needle in name:
                return value, f"table: {name} bf16 dense"
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        value = _measured_peak(torch.device("cuda", idx), "bfloat16")
        return value, f"measured: bf16 1024x1024 matmul on {name} (set {ENV_PEAK_FLOPS} for the datasheet peak)"
    if dev.type == "cpu":
        return _measured_peak("cpu", "float32"), "measured: fp32 1024x1024 matmul on cpu"
    raise ValueError(f"no peak FLOP/s known for device {dev}: set {ENV_PEAK_FLOPS}")


# ------------------------------------------------------------------------------------- memory


_psutil_process: Any = None


def _rss_bytes() -> int | None:
    global _psutil_process
    try:
        if _psutil_process is None:
            import psutil

            _psutil_process = psutil.Process()
        if _psutil_process.pid == os.getpid():  # not inherited across fork
            return int(_psutil_process.memory_info().rss)
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cuda_memory() -> dict[str, int]:
    torch = sys.modules.get("torch")  # never import torch just for this
    if torch is None:
        return {}
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return {}
        return {
            "cuda_allocated": int(torch.cuda.memory_allocated()),
            "cuda_max_allocated": int(torch.cuda.max_memory_allocated()),
        }
    except Exception:  # pragma: no cover - driver trouble must not kill training
        return {}


def _json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats (a diverged loss) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_port_from_env(local_rank: int, environ: dict[str, str] | None = None) -> int | None:
    """The port this local rank serves on: ``ZHINAO_METRICS_PORT + LOCAL_RANK``, None when unset or 0."""
    environ = os.environ if environ is None else environ
    raw = environ.get("ZHINAO_METRICS_PORT", "").strip()
    if not raw or int(raw) == 0:
        return None
    return int(raw) + local_rank


# ---------------------------------------------------------------------------------- metrics


class TrainingMetrics:
    """Prometheus series plus a JSONL log for one training process.

    ``port``: None or 0 serves no HTTP; ``PICK_FREE_PORT`` (-1) binds an ephemeral port; any other
    value binds that port. The bind address is ``addr``, else ``$ZHINAO_METRICS_ADDR``, else
    0.0.0.0. Each instance has its own `CollectorRegistry` unless one is given, so several can live
    in one process.
    """

    _STEP_FIELDS = frozenset(
        {
            "event", "ts", "step", "loss", "lr", "grad_norm", "tokens", "samples", "tokens_per_second",
            "samples_per_second", "step_seconds", "mfu", "tokens_total", "samples_total",
            "memory_rss_bytes", "memory_cuda_allocated_bytes", "memory_cuda_max_allocated_bytes",
            "pipeline", "stage", "rank",
        }
    )  # fmt: skip
    _RESERVED_GAUGES = frozenset(
        {
            "train_loss", "learning_rate", "grad_norm", "tokens_per_second", "samples_per_second",
            "step_seconds", "mfu", "memory_bytes", "step", "tokens", "samples", "steps",
            "checkpoint_seconds", "checkpoint_duration_seconds",
        }
    )  # fmt: skip

    def __init__(
        self,
        *,
        pipeline: str,
        stage: str,
        rank: int,
        port: int | None,
        log_path: Path | None = None,
        registry: CollectorRegistry | None = None,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        addr: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.stage = stage
        self.rank = int(rank)
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.registry = registry if registry is not None else CollectorRegistry()
        self._labels = {"pipeline": pipeline, "stage": stage, "rank": str(self.rank)}
        self._lock = threading.Lock()
        self._closed = False
        self.tokens_total = 0
        self.samples_total = 0

        def gauge(name: str, doc: str, extra_labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, (*LABELS, *extra_labels), registry=self.registry)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, LABELS, registry=self.registry).labels(**self._labels)

        # Gauges get their labelled child on first set: a gauge never reads 0 before the first step.
        # Counters and the histogram start at 0 (the usual Prometheus convention for counters).
        lv = self._labels
        self._loss = gauge("zhinao_train_loss", "Training loss of the last step.")
        self._lr = gauge("zhinao_learning_rate", "Learning rate used by the last step.")
        self._grad_norm = gauge("zhinao_grad_norm", "Global gradient norm of the last step (before clipping).")
        self._tps = gauge("zhinao_tokens_per_second", "Tokens this process trained on per second, last step.")
        self._sps = gauge("zhinao_samples_per_second", "Samples this process trained on per second, last step.")
        self._step_seconds = gauge("zhinao_step_seconds", "Wall-clock seconds of the last optimizer step.")
        self._mfu = gauge("zhinao_mfu", "Model FLOPs utilisation of the last step, 0..1 (see docs/metrics.md).")
        self._memory = gauge(
            "zhinao_memory_bytes", "Process memory by kind: rss, cuda_allocated, cuda_max_allocated.", ("kind",)
        )
        self._step = gauge("zhinao_step", "Optimizer step number of the last recorded step.")
        self._tokens_total = counter("zhinao_tokens_total", "Tokens trained on by this process.")
        self._samples_total = counter("zhinao_samples_total", "Samples trained on by this process.")
        self._steps_total = counter("zhinao_steps_total", "Optimizer steps recorded by this process.")
        self._ckpt_seconds = gauge("zhinao_checkpoint_seconds", "Seconds the last checkpoint took.")
        self._ckpt_blocking = gauge(
            "zhinao_checkpoint_blocking_seconds", "Seconds the last checkpoint held training up (its staging)."
        )
        self._ckpt_hist = Histogram(
            "zhinao_checkpoint_duration_seconds",
            "Checkpoint save durations.",
            LABELS,
            registry=self.registry,
            buckets=_CHECKPOINT_BUCKETS,
        ).labels(**lv)
        self._extra: dict[str, Any] = {}

        self.log_path = Path(log_path) if log_path is not None else None
        self._log: IO[str] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", encoding="utf-8")

        self._server = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        if port not in (None, 0):
            bind_port = 0 if port == PICK_FREE_PORT else int(port)
            if bind_port < 0:
                raise ValueError(f"port must be None, 0, {PICK_FREE_PORT} or a port number, got {port}")
            bind_addr = addr or os.environ.get(ENV_METRICS_ADDR) or DEFAULT_METRICS_ADDR
            try:
                started = start_http_server(bind_port, addr=bind_addr, registry=self.registry)
                if not isinstance(started, tuple):  # very old prometheus-client returned None
                    raise RuntimeError("prometheus-client too old: start_http_server must return (server, thread)")
                self._server, self._thread = started
            except Exception:
                self._close_log()
                raise
            self._port = int(self._server.server_port)
            log.info("serving metrics on http://%s:%d/metrics", bind_addr, self._port)

    # ------------------------------------------------------------------------------- API

    @property
    def port(self) -> int | None:
        """The bound HTTP port, or None when not serving."""
        return self._port

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._labels)

    def record_step(
        self,
        *,
        step: int,
        loss: float,
        lr: float,
        grad_norm: float,
        tokens: int,
        samples: int,
        step_seconds: float,
        logged: dict[str, Any] | None = None,
        **extra: float,
    ) -> dict[str, Any]:
        """Update every per-step series and append one JSONL record; returns that record.

        ``tokens``/``samples`` are what this process trained on in this step; ``step_seconds`` its
        wall-clock time. tokens/s, samples/s and MFU are left unset (null in JSONL) when
        ``step_seconds <= 0``; MFU also when flops_per_token or peak_flops is unknown. Each keyword
        in ``extra`` becomes a gauge ``zhinao_<name>`` and a JSONL field ``<name>``; ``logged`` holds
        JSON fields for the record alone (no gauge), e.g. the ids of the samples trained on.
        """
        for name in extra:
            if name in self._STEP_FIELDS or name in self._RESERVED_GAUGES or not _NAME_RE.match(name):
                raise ValueError(f"extra metric name {name!r} is reserved or not a valid metric name")
            with self._lock:
                self._extra_gauge(name)  # create (or fail) before touching any series
        tokens = int(tokens)
        samples = int(samples)
        step_seconds = float(step_seconds)
        tps = tokens / step_seconds if step_seconds > 0 else None
        sps = samples / step_seconds if step_seconds > 0 else None
        mfu = None
        if tps is not None and self.flops_per_token is not None and self.peak_flops:
            mfu = tps * self.flops_per_token / self.peak_flops
        rss = _rss_bytes()
        cuda = _cuda_memory()

        with self._lock:
            self.tokens_total += tokens
            self.samples_total += samples
            self._loss.labels(**self._labels).set(loss)
            self._lr.labels(**self._labels).set(lr)
            self._grad_norm.labels(**self._labels).set(grad_norm)
            self._step_seconds.labels(**self._labels).set(step_seconds)
            if tps is not None:
                self._tps.labels(**self._labels).set(tps)
                self._sps.labels(**self._labels).set(sps)
            if mfu is not None:
                self._mfu.labels(**self._labels).set(mfu)
            if rss is not None:
                self._memory.labels(**self._labels, kind="rss").set(rss)
            for kind, value in cuda.items():
                self._memory.labels(**self._labels, kind=kind).set(value)
            self._step.labels(**self._labels).set(step)
            self._tokens_total.inc(tokens)
            self._samples_total.inc(samples)
            self._steps_total.inc()
            for name, value in extra.items():
                self._extra_gauge(name).labels(**self._labels).set(float(value))

            record: dict[str, Any] = {
                "event": "step",
                "ts": time.time(),
                "step": int(step),
                "loss": float(loss),
                "lr": float(lr),
                "grad_norm": float(grad_norm),
                "tokens": tokens,
                "samples": samples,
                "tokens_per_second": tps,
                "samples_per_second": sps,
                "step_seconds": step_seconds,
                "mfu": mfu,
                "tokens_total": self.tokens_total,
                "samples_total": self.samples_total,
                "memory_rss_bytes": rss,
            }
            for kind, value in cuda.items():
                record[f"memory_{kind}_bytes"] = value
            record.update({name: float(value) for name, value in extra.items()})
            record.update(logged or {})
            record.update(pipeline=self.pipeline, stage=self.stage, rank=self.rank)
            self._write(record)
        return record

    def record_checkpoint(self, seconds: float, step: int, *, blocking_seconds: float | None = None) -> None:
        """Record how long saving the checkpoint at `step` took, and how much of it training waited
        for (a background save: only the staging to host memory; a synchronous one: all of it)."""
        seconds = float(seconds)
        blocking = seconds if blocking_seconds is None else float(blocking_seconds)
        with self._lock:
            self._ckpt_seconds.labels(**self._labels).set(seconds)
            self._ckpt_blocking.labels(**self._labels).set(blocking)
            self._ckpt_hist.observe(seconds)
            self._write(
                {
                    "event": "checkpoint",
                    "ts": time.time(),
                    "step": int(step),
                    "seconds": seconds,
                    "blocking_seconds": blocking,
                    "pipeline": self.pipeline,
                    "stage": self.stage,
                    "rank": self.rank,
                }
            )

    def flush(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.flush()

    def close(self) -> None:
        """Flush and close the JSONL file and stop the HTTP server. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_log()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
            self._thread = None

    def __enter__(self) -> TrainingMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------- helpers

    def _extra_gauge(self, name: str) -> Any:
        child = self._extra.get(name)
        if child is None:
            child = Gauge(
                f"zhinao_{name}", f"Stage-specific metric {name!r} of the last step.", LABELS, registry=self.registry
            )
            self._extra[name] = child
        return child

    def _write(self, record: dict[str, Any]) -> None:
        if self._log is None:
            return
        line = json.dumps({k: _json_safe(v) for k, v in record.items()}, allow_nan=False, separators=(",", ":"))
        self._log.write(line + "\n")
        self._log.flush()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.flush()
            self._log.close()
            self._log = None
