"""kopf handlers: thin glue around `plan.py` and `ablation_control.py`. Read -> plan -> `k8s.Cluster` -> status.

Every trigger (the pipeline created, resumed or its spec changed; one of its PyTorchJobs changed;
a periodic safety-net timer) runs the same `reconcile`, which re-reads the pipeline and lists its
jobs, so a missed event or an operator restart changes nothing: the next reconcile sees the same
cluster and makes the same decisions. Job names are deterministic, so nothing is created twice.
Ablations work the same way (`reconcile_ablation`), triggered by their own changes, a timer, and
events of their children: the prepare/evaluate PyTorchJobs and the runs' TrainingPipelines.
"""

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from zhinao.config._base import SpecModel
from zhinao_k8s.ablation_control import AblationStatus, ablation_from_body, plan_ablation
from zhinao_k8s.ablation_plan import LABEL_ABLATION
from zhinao_k8s.api.crd import ABLATION_PLURAL, PLURAL
from zhinao_k8s.api.errors import format_errors
from zhinao_k8s.api.v1alpha1 import GROUP, STAGE_KINDS, VERSION
from zhinao_k8s.k8s import JOB_GROUP, JOB_PLURAL, JOB_VERSION
from zhinao_k8s.plan import owner_reference, pipeline_from_body, plan, plan_cleanup
from zhinao_k8s.render.names import LABEL_PIPELINE
from zhinao_k8s.status import TERMINAL, PipelineStatus, read_status

RECONCILE_INTERVAL = float(os.environ.get("ZHINAO_RECONCILE_INTERVAL", "60"))
"""Seconds between safety-net reconciles of each pipeline (events drive the normal flow)."""


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(memo: kopf.Memo, namespace: str, name: str, trigger: str, logger: Any) -> str | None:
    """One pass for one pipeline; returns its phase (None when it is gone or being deleted)."""
    started = time.perf_counter()
    memo.metrics.reconciles.labels(trigger).inc()
    try:
        with memo.locks(namespace, name):
            phase = _reconcile(memo, namespace, name, logger)
    except Exception as exc:
        memo.metrics.errors.labels(type(exc).__name__).inc()
        raise
    finally:
        memo.metrics.latency.observe(time.perf_counter() - started)
    memo.metrics.pipeline_phase((namespace, name), phase)
    return phase


def _reconcile(memo: kopf.Memo, namespace: str, name: str, logger: Any) -> str | None:
    cluster = memo.cluster
    body = cluster.get_pipeline(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    try:
        pipeline = pipeline_from_body(body)
    except ValidationError as exc:
        _reject(lambda status: cluster.patch_pipeline_status(namespace, name, status), exc, STAGE_KINDS)
    previous = read_status(body.get("status"))
    result = plan(
        pipeline,
        cluster.list_jobs(namespace, name),
        previous,
        now=now(),
        owner=owner_reference(body),
        generation=body["metadata"].get("generation"),
    )
    for line in cluster.apply(namespace, result.actions):
        logger.info(line)
    for action in result.actions:
        memo.metrics.actions.labels(type(action).__name__).inc()
    _observe_finished(memo, pipeline, previous, result.status)
    wire = _status_patch(result.status)
    if wire != _status_patch(previous) or body.get("status", {}).get("phase") != result.status.phase:
        cluster.patch_pipeline_status(namespace, name, wire)
    return result.status.phase


def _reject(patch_status: Callable[[dict], None], exc: ValidationError, stage_kinds: tuple[str, ...] = ()) -> NoReturn:
    """A spec the models refuse: Failed with every problem in status, and no retry by kopf."""
    message = "; ".join(format_errors(exc, stage_kinds))
    patch_status({"phase": "Failed", "reason": "InvalidSpec", "message": message})
    raise kopf.PermanentError(f"invalid spec: {message}") from None


def _status_patch(status: SpecModel) -> dict:
    """A merge patch that also removes fields that became empty (null deletes a key)."""
    wire = status.to_wire()
    return {field.alias or key: wire.get(field.alias or key) for key, field in type(status).model_fields.items()}


def _observe_finished(memo: kopf.Memo, pipeline: Any, previous: PipelineStatus, new: PipelineStatus) -> None:
    kinds = {s.name: s.kind for s in pipeline.spec.stages}
    for stage in new.stages:
        before = previous.stage(stage.name)
        if stage.phase in TERMINAL and (before is None or before.phase != stage.phase):
            memo.metrics.stage_finished(kinds.get(stage.name, "unknown"), stage)
        if stage.phase == "Retrying" and (before is None or before.phase != "Retrying"):
            memo.metrics.stage_finished(kinds.get(stage.name, "unknown"), stage.model_copy(update={"phase": "Failed"}))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def pipeline_changed(name: str, namespace: str, memo: kopf.Memo, logger: Any, reason: str = "change", **_: Any) -> None:
    reconcile(memo, namespace, name, str(reason), logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL)
def pipeline_tick(name: str, namespace: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    reconcile(memo, namespace, name, "timer", logger)


@kopf.on.event(JOB_GROUP, JOB_VERSION, JOB_PLURAL, labels={LABEL_PIPELINE: kopf.PRESENT})
def job_changed(labels: dict, namespace: str, type: str | None, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    if type is None:  # the initial listing; the pipeline's own resume handler covers it
        return
    reconcile(memo, namespace, labels[LABEL_PIPELINE], "job", logger)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def pipeline_deleted(name: str, namespace: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """The finalizer's work: delete the pipeline's PyTorchJobs (owner references do it too, but
    only where the garbage collector runs and only after the pipeline object is gone)."""
    with memo.locks(namespace, name):
        jobs = memo.cluster.list_jobs(namespace, name)
        for line in memo.cluster.apply(namespace, plan_cleanup(jobs, name)):
            logger.info(line)
    memo.metrics.pipeline_phase((namespace, name), None)


def reconcile_ablation(memo: kopf.Memo, namespace: str, name: str, logger: Any) -> str | None:
    """One pass for one ablation; returns its phase (None when it is gone or being deleted)."""
    # The lock table is keyed by name; `:` never occurs in one, so an Ablation and a
    # TrainingPipeline of the same name keep separate locks.
    with memo.locks(namespace, f"ablation:{name}"):
        cluster = memo.cluster
        body = cluster.get_ablation(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        try:
            ablation = ablation_from_body(body)
        except ValidationError as exc:
            _reject(lambda status: cluster.patch_ablation_status(namespace, name, status), exc)
        previous = read_status(body.get("status"), AblationStatus)
        result = plan_ablation(
            ablation,
            cluster.list_ablation_jobs(namespace, name),
            cluster.list_ablation_runs(namespace, name),
            previous,
            now=now(),
            owner=owner_reference(body),
            generation=body["metadata"].get("generation"),
        )
        for line in cluster.apply(namespace, result.actions):
            logger.info(line)
        wire = _status_patch(result.status)
        if wire != _status_patch(previous) or body.get("status", {}).get("phase") != result.status.phase:
            cluster.patch_ablation_status(namespace, name, wire)
        return result.status.phase


@kopf.on.resume(GROUP, VERSION, ABLATION_PLURAL)
@kopf.on.create(GROUP, VERSION, ABLATION_PLURAL)
@kopf.on.update(GROUP, VERSION, ABLATION_PLURAL, field="spec")
def ablation_changed(name: str, namespace: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    reconcile_ablation(memo, namespace, name, logger)


@kopf.timer(GROUP, VERSION, ABLATION_PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL)
def ablation_tick(name: str, namespace: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    reconcile_ablation(memo, namespace, name, logger)


@kopf.on.event(GROUP, VERSION, PLURAL, labels={LABEL_ABLATION: kopf.PRESENT})
@kopf.on.event(JOB_GROUP, JOB_VERSION, JOB_PLURAL, labels={LABEL_ABLATION: kopf.PRESENT})
def ablation_child_changed(
    labels: dict, namespace: str, type: str | None, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    """A run (TrainingPipeline) or the prepare/evaluate PyTorchJob of an ablation changed."""
    if type is None:  # the initial listing; the ablation's own resume handler covers it
        return
    reconcile_ablation(memo, namespace, labels[LABEL_ABLATION], logger)
