"""Operator start-up: kopf settings, its own Prometheus metrics, the /healthz probe and `run_operator`.

`zhinao-k8s operator run` calls `run_operator`; tests call it in a thread with a stop flag.
"""

import asyncio
import logging
import threading
from collections import defaultdict
from datetime import datetime
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from zhinao_k8s.k8s import Cluster
from zhinao_k8s.status import StageStatus

FINALIZER = "zhinao.ai/cleanup"
ANNOTATION_PREFIX = "kopf.zhinao.ai"
PIPELINE_PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")
DEFAULT_METRICS_PORT = 8000
DEFAULT_HEALTH_PORT = 8080

logger = logging.getLogger("zhinao_k8s.operator")


class OperatorMetrics:
    """The operator's own metrics (not training metrics): on a private registry, served on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "zhinao_operator_reconciles_total",
            "Reconciles of a TrainingPipeline, by trigger.",
            ("trigger",),
            registry=self.registry,
        )
        self.errors = Counter(
            "zhinao_operator_reconcile_errors_total",
            "Reconciles that raised, by exception type.",
            ("error",),
            registry=self.registry,
        )
        self.actions = Counter(
            "zhinao_operator_actions_total",
            "PyTorchJob actions carried out, by kind.",
            ("action",),
            registry=self.registry,
        )
        self.latency = Histogram(
            "zhinao_operator_reconcile_seconds",
            "Wall time of one reconcile (list, plan, apply, status).",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.stage_seconds = Histogram(
            "zhinao_operator_stage_duration_seconds",
            "Start-to-finish time of a stage attempt.",
            ("kind", "phase"),
            registry=self.registry,
            buckets=(60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600, 168 * 3600),
        )
        self.pipelines = Gauge(
            "zhinao_operator_pipelines",
            "TrainingPipelines known to this operator, by phase.",
            ("phase",),
            registry=self.registry,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for phase in PIPELINE_PHASES:
            self.pipelines.labels(phase).set(0)

    def pipeline_phase(self, key: tuple[str, str], phase: str | None) -> None:
        """Record (or with None, forget) a pipeline's phase and refresh the by-phase gauge."""
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts = {p: 0 for p in PIPELINE_PHASES}
            for p in self._phases.values():
                counts[p] = counts.get(p, 0) + 1
            for p, n in counts.items():
                self.pipelines.labels(p).set(n)

    def stage_finished(self, kind: str, stage: StageStatus) -> None:
        seconds = _seconds_between(stage.start_time, stage.completion_time)
        if seconds is not None:
            self.stage_seconds.labels(kind, stage.phase).observe(seconds)

    def serve(self, port: int, addr: str = "0.0.0.0"):
        return start_http_server(port, addr=addr, registry=self.registry)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((b - a).total_seconds(), 0.0)


class PipelineLocks:
    """One lock per pipeline: the pipeline's own handlers and its jobs' event handler never interleave."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)

    def __call__(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks[(namespace, name)]


def make_memo(cluster: Cluster, metrics: OperatorMetrics | None = None) -> kopf.Memo:
    return kopf.Memo(cluster=cluster, metrics=metrics or OperatorMetrics(), locks=PipelineLocks())


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # Annotations, not status: the CRD's status schema belongs to the operator's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX,
        key="last-handled-configuration",
    )
    # No scanning: the CRD is installed before the operator starts (Helm `crds/`), and namespaces
    # are the ones given; so it needs no cluster-wide list/watch of CRDs or namespaces (least privilege).
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 16  # sync handlers run in this thread pool


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf connects with the very credentials the handlers' kubernetes client has (in-cluster or
    kubeconfig, loaded once by `k8s.load_client`), so both always reach the same API server."""
    cfg = memo.cluster.api_client.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def run_operator(
    *,
    namespaces: list[str] | None = None,
    metrics_port: int | None = DEFAULT_METRICS_PORT,
    health_port: int | None = DEFAULT_HEALTH_PORT,
    bind: str = "0.0.0.0",
    cluster: Cluster | None = None,
    metrics: OperatorMetrics | None = None,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
) -> None:
    """Run the operator until stopped: all namespaces, or only `namespaces`.

    /healthz is kopf's liveness endpoint on `health_port`; /metrics is on `metrics_port`.
    Standalone (no kopf peering): one replica, and the Deployment's Recreate strategy keeps it one.
    """
    import zhinao_k8s.handlers  # noqa: F401  (registers the handlers)

    memo = make_memo(cluster or Cluster(), metrics)
    server = memo.metrics.serve(metrics_port, bind) if metrics_port is not None else None
    try:
        asyncio.run(
            kopf.operator(
                standalone=True,
                clusterwide=not namespaces,
                namespaces=namespaces or (),
                liveness_endpoint=f"http://{bind}:{health_port}/healthz" if health_port is not None else None,
                memo=memo,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        )
    finally:
        if server is not None:
            server[0].shutdown()
            server[0].server_close()
