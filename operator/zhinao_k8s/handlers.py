"""kopf handlers: thin glue around `plan.py`. Read -> plan -> `k8s.Cluster` -> status.

Every trigger (the pipeline created, resumed or its spec changed; one of its PyTorchJobs changed;
a periodic safety-net timer) runs the same `reconcile`, which re-reads the pipeline and lists its
jobs, so a missed event or an operator restart changes nothing: the next reconcile sees the same
cluster and makes the same decisions. Job names are deterministic, so nothing is created twice.
"""

import os
import time
from datetime import datetime, timezone
from typing import Any

import kopf
from pydantic import ValidationError

from zhinao_k8s.api.crd import PLURAL
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
        problems = format_errors(exc, STAGE_KINDS)
        invalid = {"phase": "Failed", "reason": "InvalidSpec", "message": "; ".join(problems)}
        cluster.patch_pipeline_status(namespace, name, invalid)
        raise kopf.PermanentError(f"invalid spec: {invalid['message']}") from None
    previous = read_status(body.get("status"))
    result = plan(pipeline, cluster.list_jobs(namespace, name), previous, now=now(),
                  owner=owner_reference(body), generation=body["metadata"].get("generation"))
    for line in cluster.apply(namespace, result.actions):
        logger.info(line)
    for action in result.actions:
        memo.metrics.actions.labels(type(action).__name__).inc()
    _observe_finished(memo, pipeline, previous, result.status)
    wire = _status_patch(result.status)
    if wire != _status_patch(previous) or body.get("status", {}).get("phase") != result.status.phase:
        cluster.patch_pipeline_status(namespace, name, wire)
    return result.status.phase


def _status_patch(status: PipelineStatus) -> dict:
    """A merge patch that also removes fields that became empty (null deletes a key)."""
    wire = status.to_wire()
    return {field.alias or key: wire.get(field.alias or key) for key, field in PipelineStatus.model_fields.items()}


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
