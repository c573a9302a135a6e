"""kopf handlers: which events reconcile which object. The pass itself is `reconcile.py`.

A TrainingPipeline is reconciled when it is created, resumed or its spec changes, when one of its
PyTorchJobs or memory plan Jobs changes, and by a periodic safety-net timer. An Ablation the same way, its children
being the prepare/evaluate PyTorchJobs and the runs' TrainingPipelines.
"""

import os
from typing import Any

import kopf

from zhinao_k8s.api.crd import ABLATION_PLURAL, PLURAL
from zhinao_k8s.api.status import TERMINAL
from zhinao_k8s.api.v1alpha1 import GROUP, VERSION
from zhinao_k8s.controller.k8s import (
    JOB_GROUP,
    JOB_PLURAL,
    JOB_VERSION,
    PLAN_JOB_GROUP,
    PLAN_JOB_PLURAL,
    PLAN_JOB_VERSION,
)
from zhinao_k8s.controller.plan_pipeline import plan_cleanup
from zhinao_k8s.controller.reconcile import ABLATIONS, PIPELINES, reconcile
from zhinao_k8s.render.names import LABEL_ABLATION, LABEL_PIPELINE

RECONCILE_INTERVAL = float(os.environ.get("ZHINAO_RECONCILE_INTERVAL", "60"))
"""Seconds between safety-net reconciles of each unfinished object (events drive the normal flow)."""


def unfinished(status: dict, **_: Any) -> bool:
    """The safety-net timer runs only until the object is Succeeded or Failed (an invalid spec is
    Failed too): a finished object changes only through its spec or its children, whose events
    still reconcile it."""
    return (status or {}).get("phase") not in TERMINAL


# -- TrainingPipeline ---------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def pipeline_changed(name: str, namespace: str, memo: kopf.Memo, logger: Any, reason: str = "change", **_: Any) -> None:
    reconcile(PIPELINES, memo, namespace, name, str(reason), logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL, when=unfinished)
def pipeline_tick(name: str, namespace: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    reconcile(PIPELINES, memo, namespace, name, "timer", logger)


@kopf.on.event(JOB_GROUP, JOB_VERSION, JOB_PLURAL, labels={LABEL_PIPELINE: kopf.PRESENT})
def job_changed(labels: dict, namespace: str, type: str | None, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    if type is None:  # the initial listing; the pipeline's own resume handler covers it
        return
    reconcile(PIPELINES, memo, namespace, labels[LABEL_PIPELINE], "job", logger)


@kopf.on.event(PLAN_JOB_GROUP, PLAN_JOB_VERSION, PLAN_JOB_PLURAL, labels={LABEL_PIPELINE: kopf.PRESENT})
def plan_job_changed(labels: dict, namespace: str, type: str | None, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """A stage's memory plan Job (batch/v1) changed: its verdict may open or close the stage's start."""
    if type is None:
        return
    reconcile(PIPELINES, memo, namespace, labels[LABEL_PIPELINE], "plan", logger)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def pipeline_deleted(name: str, namespace: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """The finalizer's work: delete the pipeline's PyTorchJobs (owner references do it too, but
    only where the garbage collector runs and only after the pipeline object is gone)."""
    with memo.locks(PIPELINES.name, namespace, name):
        jobs = memo.cluster.list_jobs(namespace, name)
        for line in memo.cluster.apply(namespace, plan_cleanup(jobs, name)):
            logger.info(line)
    memo.metrics.object_phase(PIPELINES.name, (namespace, name), None)


# -- Ablation -----------------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, ABLATION_PLURAL)
@kopf.on.create(GROUP, VERSION, ABLATION_PLURAL)
@kopf.on.update(GROUP, VERSION, ABLATION_PLURAL, field="spec")
def ablation_changed(name: str, namespace: str, memo: kopf.Memo, logger: Any, reason: str = "change", **_: Any) -> None:
    reconcile(ABLATIONS, memo, namespace, name, str(reason), logger)


@kopf.timer(
    GROUP, VERSION, ABLATION_PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL, when=unfinished
)
def ablation_tick(name: str, namespace: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    reconcile(ABLATIONS, memo, namespace, name, "timer", logger)


@kopf.on.event(GROUP, VERSION, PLURAL, labels={LABEL_ABLATION: kopf.PRESENT})
@kopf.on.event(JOB_GROUP, JOB_VERSION, JOB_PLURAL, labels={LABEL_ABLATION: kopf.PRESENT})
def ablation_child_changed(
    labels: dict, namespace: str, type: str | None, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    """A run (TrainingPipeline) or the prepare/evaluate PyTorchJob of an ablation changed."""
    if type is None:  # the initial listing; the ablation's own resume handler covers it
        return
    reconcile(ABLATIONS, memo, namespace, labels[LABEL_ABLATION], "child", logger)


@kopf.on.event(GROUP, VERSION, ABLATION_PLURAL)
def ablation_event(name: str, namespace: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A deleted Ablation leaves the by-phase gauge (it has no finalizer: owner references delete its children)."""
    if type == "DELETED":
        memo.metrics.object_phase(ABLATIONS.name, (namespace, name), None)
