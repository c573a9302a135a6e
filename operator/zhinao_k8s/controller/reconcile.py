"""One reconcile skeleton for both kinds the operator owns: read -> plan -> `k8s.Cluster` -> status.

A pass re-reads the object and lists its children, so a missed event or an operator restart
changes nothing: the next pass sees the same cluster and makes the same decisions (child names
are deterministic, so nothing is created twice). What differs between a TrainingPipeline and an
Ablation (how to read it, what children to list, the pure planner) is a `Kind`; locking, invalid
specs, applying actions, the status patch and the operator's metrics are here, once.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import kopf
from pydantic import ValidationError

from zhinao.config._base import SpecModel
from zhinao_k8s.api.errors import format_errors
from zhinao_k8s.api.status import TERMINAL, AblationStatus, PipelineStatus, read_status
from zhinao_k8s.api.v1alpha1 import STAGE_KINDS
from zhinao_k8s.controller.fit_gate import finished
from zhinao_k8s.controller.k8s import Cluster
from zhinao_k8s.controller.metrics import ABLATION, PIPELINE, OperatorMetrics
from zhinao_k8s.controller.plan_ablation import ablation_from_body, plan_ablation
from zhinao_k8s.controller.plan_pipeline import PlanJobs, owner_reference, pipeline_from_body, plan_pipeline
from zhinao_k8s.render.names import job_name
from zhinao_k8s.render.plan_job import needs_plan, plan_job_name


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Planned(Protocol):
    """What a planner returns (`PipelinePlan`, `AblationPlan`): the actions to carry out, in order,
    and the new status."""

    actions: tuple
    status: SpecModel


@dataclass(frozen=True)
class Kind:
    """What one kind of object needs from the skeleton."""

    name: str
    """The object's kind: the metrics' `kind` label and part of the lock key."""
    get: Callable[[Cluster, str, str], dict | None]
    patch_status: Callable[[Cluster, str, str, dict], None]
    parse: Callable[[dict], Any]
    """The object's spec model from its body; raises ValidationError."""
    status_model: type[SpecModel]
    plan: Callable[..., Planned]
    """(cluster, namespace, name, parsed object, previous status, *, now, owner, generation) -> Planned:
    lists the children and calls the pure planner."""
    stage_kinds: tuple[str, ...] = ()
    """For the invalid-spec message (which stage kinds exist)."""
    observe: Callable[[OperatorMetrics, Any, Any, Any], None] | None = None
    """(metrics, parsed object, previous status, new status): kind-specific metrics."""


def reconcile(kind: Kind, memo: kopf.Memo, namespace: str, name: str, trigger: str, logger: Any) -> str | None:
    """One pass for one object; returns its phase (None when it is gone or being deleted)."""
    metrics: OperatorMetrics = memo.metrics
    started = time.perf_counter()
    metrics.reconciles.labels(kind.name, trigger).inc()
    try:
        with memo.locks(kind.name, namespace, name):
            phase = _reconcile(kind, memo, namespace, name, logger)
    except Exception as exc:
        metrics.errors.labels(kind.name, type(exc).__name__).inc()
        raise
    finally:
        metrics.latency.labels(kind.name).observe(time.perf_counter() - started)
    metrics.object_phase(kind.name, (namespace, name), phase)
    return phase


def _reconcile(kind: Kind, memo: kopf.Memo, namespace: str, name: str, logger: Any) -> str | None:
    cluster: Cluster = memo.cluster
    body = kind.get(cluster, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    try:
        obj = kind.parse(body)
    except ValidationError as exc:
        # A spec the models refuse: Failed with every problem in status, and no retry by kopf.
        message = "; ".join(format_errors(exc, kind.stage_kinds))
        reported = body.get("status") or {}
        if reported.get("reason") == "InvalidSpec" and reported.get("message") == message:
            return "Failed"  # this very spec was reported already: no second patch, no second event
        kind.patch_status(cluster, namespace, name, {"phase": "Failed", "reason": "InvalidSpec", "message": message})
        raise kopf.PermanentError(f"invalid spec: {message}") from None
    previous = read_status(body.get("status"), kind.status_model)
    result = kind.plan(
        cluster,
        namespace,
        name,
        obj,
        previous,
        now=now(),
        owner=owner_reference(body),
        generation=body["metadata"].get("generation"),
    )
    for line in cluster.apply(namespace, result.actions):
        logger.info(line)
    for action in result.actions:
        memo.metrics.actions.labels(type(action).__name__).inc()
    if kind.observe is not None:
        kind.observe(memo.metrics, obj, previous, result.status)
    wire = _status_patch(result.status)
    if wire != _status_patch(previous) or body.get("status", {}).get("phase") != result.status.phase:
        kind.patch_status(cluster, namespace, name, wire)
    return result.status.phase


def _status_patch(status: SpecModel) -> dict:
    """A merge patch that also removes fields that became empty (null deletes a key)."""
    wire = status.to_wire()
    return {field.alias or key: wire.get(field.alias or key) for key, field in type(status).model_fields.items()}


# -- TrainingPipeline ---------------------------------------------------------------------------


def _plan_pipeline(cluster: Cluster, namespace: str, name: str, pipeline, previous, **kw) -> Planned:
    jobs = cluster.list_jobs(namespace, name)
    plans = PlanJobs(cluster.list_plan_jobs(namespace, name) if _plans_gpu_stages(pipeline) else {})
    for stage in pipeline.spec.stages:
        plan = plans.jobs.get(plan_job_name(pipeline, stage))
        # A verdict is read only where it is needed: a finished plan of a stage not started yet.
        if plan is not None and finished(plan) and job_name(pipeline, stage) not in jobs:
            message = cluster.termination_message(namespace, plan["metadata"]["name"])
            if message is not None:
                plans.messages[plan["metadata"]["name"]] = message
    return plan_pipeline(pipeline, jobs, previous, plans=plans, **kw)


def _plans_gpu_stages(pipeline) -> bool:
    return any(needs_plan(pipeline, stage) for stage in pipeline.spec.stages)


def _observe_stages(metrics: OperatorMetrics, pipeline, previous: PipelineStatus, new: PipelineStatus) -> None:
    """A stage attempt's duration, once, when it ends (a retried attempt counts as Failed)."""
    kinds = {s.name: s.kind for s in pipeline.spec.stages}
    for stage in new.stages:
        before = previous.stage(stage.name)
        if stage.phase in TERMINAL and (before is None or before.phase != stage.phase):
            metrics.stage_finished(kinds.get(stage.name, "unknown"), stage)
        if stage.phase == "Retrying" and (before is None or before.phase != "Retrying"):
            metrics.stage_finished(kinds.get(stage.name, "unknown"), stage.model_copy(update={"phase": "Failed"}))


PIPELINES = Kind(
    name=PIPELINE,
    get=Cluster.get_pipeline,
    patch_status=Cluster.patch_pipeline_status,
    parse=pipeline_from_body,
    status_model=PipelineStatus,
    plan=_plan_pipeline,
    stage_kinds=STAGE_KINDS,
    observe=_observe_stages,
)


# -- Ablation -----------------------------------------------------------------------------------


def _plan_ablation(cluster: Cluster, namespace: str, name: str, ablation, previous, **kw) -> Planned:
    jobs = cluster.list_ablation_jobs(namespace, name)
    return plan_ablation(ablation, jobs, cluster.list_ablation_runs(namespace, name), previous, **kw)


ABLATIONS = Kind(
    name=ABLATION,
    get=Cluster.get_ablation,
    patch_status=Cluster.patch_ablation_status,
    parse=ablation_from_body,
    status_model=AblationStatus,
    plan=_plan_ablation,
)
