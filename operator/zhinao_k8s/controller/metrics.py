"""The operator's own Prometheus metrics (not training metrics), on a private registry served on /metrics.

Both reconcile paths (TrainingPipeline, Ablation) record the same counters and histogram through
`reconcile.py`, labelled with the kind of object; each kind has its own by-phase gauge.
"""

import threading
from datetime import datetime
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from zhinao_k8s.api.status import AblationPhase, PipelinePhase, StageStatus

PIPELINE = "TrainingPipeline"
ABLATION = "Ablation"
PHASES: dict[str, tuple[str, ...]] = {PIPELINE: get_args(PipelinePhase), ABLATION: get_args(AblationPhase)}
"""Every phase of each kind: the by-phase gauges start with all of them at 0."""


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "zhinao_operator_reconciles_total",
            "Reconciles, by kind of object and trigger.",
            ("kind", "trigger"),
            registry=self.registry,
        )
        self.errors = Counter(
            "zhinao_operator_reconcile_errors_total",
            "Reconciles that raised, by kind of object and exception type.",
            ("kind", "error"),
            registry=self.registry,
        )
        self.actions = Counter(
            "zhinao_operator_actions_total",
            "Actions carried out on children (PyTorchJobs, an Ablation's TrainingPipelines), by action.",
            ("action",),
            registry=self.registry,
        )
        self.latency = Histogram(
            "zhinao_operator_reconcile_seconds",
            "Wall time of one reconcile (list, plan, apply, status), by kind of object.",
            ("kind",),
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
        self.by_phase = {
            PIPELINE: Gauge(
                "zhinao_operator_pipelines",
                "TrainingPipelines known to this operator, by phase.",
                ("phase",),
                registry=self.registry,
            ),
            ABLATION: Gauge(
                "zhinao_operator_ablations",
                "Ablations known to this operator, by phase.",
                ("phase",),
                registry=self.registry,
            ),
        }
        self._phases: dict[str, dict[tuple[str, str], str]] = {kind: {} for kind in PHASES}
        self._lock = threading.Lock()
        for kind, phases in PHASES.items():
            for phase in phases:
                self.by_phase[kind].labels(phase).set(0)

    def object_phase(self, kind: str, key: tuple[str, str], phase: str | None) -> None:
        """Record (or with None, forget) the phase of one object of `kind` and refresh its by-phase gauge."""
        with self._lock:
            known = self._phases[kind]
            if phase is None:
                known.pop(key, None)
            else:
                known[key] = phase
            counts = dict.fromkeys(PHASES[kind], 0)
            for p in known.values():
                counts[p] = counts.get(p, 0) + 1
            for p, n in counts.items():
                self.by_phase[kind].labels(p).set(n)

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
