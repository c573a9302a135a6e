"""Operator start-up: kopf settings, the /healthz probe, /metrics (`metrics.py`) and `run_operator`.

`zhinao-k8s operator run` calls `run_operator`; tests call it in a thread with a stop flag.
"""

import asyncio
import logging
import threading
from collections import defaultdict
from typing import Any

import kopf

from zhinao_k8s.controller.k8s import Cluster
from zhinao_k8s.controller.metrics import OperatorMetrics

FINALIZER = "zhinao.ai/cleanup"
ANNOTATION_PREFIX = "kopf.zhinao.ai"
DEFAULT_METRICS_PORT = 8000
DEFAULT_HEALTH_PORT = 8080


class ObjectLocks:
    """One lock per object (kind, namespace, name): an object's own handlers and its children's
    event handlers never interleave; a TrainingPipeline and an Ablation of one name keep separate locks."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)

    def __call__(self, kind: str, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks[(kind, namespace, name)]


def make_memo(cluster: Cluster, metrics: OperatorMetrics | None = None) -> kopf.Memo:
    return kopf.Memo(cluster=cluster, metrics=metrics or OperatorMetrics(), locks=ObjectLocks())


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
    import zhinao_k8s.controller.handlers  # noqa: F401  (registers the handlers)

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
