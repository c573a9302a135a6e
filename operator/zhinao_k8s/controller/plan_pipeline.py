"""The operator's decisions for a TrainingPipeline: (pipeline, observed PyTorchJobs, last status)
-> actions + new status.

Pure: no I/O, no kubernetes or kopf imports, and the clock is an argument. `reconcile.py` feeds it
what it listed from the API server and carries out what it returns, so every decision is tested
here with tables and the handlers stay thin glue.

The rules, in stage order:
- A stage whose PyTorchJob has Succeeded is done; the next stage may start.
- The first stage without a PyTorchJob gets one (`CreateJob`), unless the pipeline is suspended.
  Names are deterministic (`<pipeline>-<stage>`), so planning twice can never create two jobs.
- A Failed job with retries left is deleted (`DeleteJob`, foreground propagation: the job object
  stays until its pods and Services are gone); only once it is gone is the stage created again,
  with the next attempt number, so a retry never meets its predecessor's pods. Without retries
  left the pipeline is Failed.
- A stage that asks for GPUs starts only once its memory plan says it fits (`fit_gate.py`): until
  then it is Pending (reason MemoryPlanning) behind a plan Job; a refusal fails it with the numbers.
- `spec.suspend` suspends the running job (`SuspendJob`) and starts nothing; resuming the pipeline
  resumes only a job the pipeline itself suspended (marked with ANNOTATION_SUSPENDED). A job someone
  else holds suspended, Kueue waiting for quota above all, is left alone: it runs when they resume it.
"""

import json
from dataclasses import dataclass, field

from zhinao_k8s.api.status import Condition, PipelineStatus, StageStatus
from zhinao_k8s.api.v1alpha1 import API_VERSION, KIND, StageBase, TrainingPipeline
from zhinao_k8s.controller.fit_gate import CONDITION, PLAN_FAILURES, CreatePlanJob, DeletePlanJob, fit_gate
from zhinao_k8s.controller.pipeline_status import stage_from_job, summarize, with_phase
from zhinao_k8s.render.names import LABEL_PIPELINE, job_name
from zhinao_k8s.render.plan_job import plan_job_name
from zhinao_k8s.render.pytorchjob import render_pytorchjob, stage_configmap

ANNOTATION_ATTEMPT = "zhinao.ai/attempt"
ANNOTATION_INPUTS = "zhinao.ai/inputs"
"""The resolved input URIs of a stage (JSON), so `kubectl describe` shows what a job reads."""
ANNOTATION_SUSPENDED = "zhinao.ai/suspended-by-pipeline"
"""Set (to "true") with the pipeline's own `runPolicy.suspend`: the only suspension it may undo."""


@dataclass(frozen=True)
class CreateJob:
    name: str
    body: dict = field(repr=False)
    configmap: dict | None = field(default=None, repr=False)
    """The stage spec ConfigMap the job's pods mount: written (created or replaced) first."""


@dataclass(frozen=True)
class DeleteJob:
    name: str
    reason: str


@dataclass(frozen=True)
class SuspendJob:
    name: str
    suspend: bool


Action = CreateJob | DeleteJob | SuspendJob | CreatePlanJob | DeletePlanJob


@dataclass(frozen=True)
class PipelinePlan:
    actions: tuple[Action, ...]
    status: PipelineStatus


def pipeline_from_body(body: dict) -> TrainingPipeline:
    """A TrainingPipeline from the object the API server holds (server-set metadata dropped)."""
    meta = body.get("metadata") or {}
    return TrainingPipeline.model_validate(
        {
            "metadata": {
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "labels": meta.get("labels") or {},
            },
            "spec": body.get("spec") or {},
        }
    )


def owner_reference(body: dict) -> dict:
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion") or API_VERSION,
        "kind": body.get("kind") or KIND,
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_job(pipeline: TrainingPipeline, stage: StageBase, *, attempt: int, owner: dict | None) -> dict:
    """The stage's PyTorchJob as the renderer makes it, plus what the operator tracks it by."""
    job = render_pytorchjob(pipeline, stage)
    meta = job["metadata"]
    meta.setdefault("annotations", {})
    meta["annotations"][ANNOTATION_ATTEMPT] = str(attempt)
    meta["annotations"][ANNOTATION_INPUTS] = json.dumps(pipeline.resolve_inputs(stage), sort_keys=True)
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return job


def _attempt_of(job: dict, fallback: int) -> int:
    raw = ((job.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ATTEMPT)
    try:
        return max(int(raw), 1)
    except (TypeError, ValueError):
        return max(fallback, 1)


def _is_deleting(job: dict) -> bool:
    return bool((job.get("metadata") or {}).get("deletionTimestamp"))


def _is_suspended(job: dict) -> bool:
    return bool(((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"))


def _suspended_by_pipeline(job: dict) -> bool:
    return ((job.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SUSPENDED) == "true"


def _suspend_action(name: str, job: dict, suspend: bool) -> "SuspendJob | None":
    """Suspend a running job; resume only one this pipeline suspended (never Kueue's)."""
    if suspend and not _is_suspended(job):
        return SuspendJob(name=name, suspend=True)
    if not suspend and _is_suspended(job) and _suspended_by_pipeline(job):
        return SuspendJob(name=name, suspend=False)
    return None


@dataclass(frozen=True)
class PlanJobs:
    """The pipeline's memory plan Jobs (batch/v1) by name, and the termination message of each
    finished one's pod (read only for stages still waiting to start)."""

    jobs: dict[str, dict] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)


def plan_pipeline(
    pipeline: TrainingPipeline,
    observed: dict[str, dict],
    previous: PipelineStatus,
    *,
    now: str,
    owner: dict | None = None,
    generation: int | None = None,
    plans: PlanJobs | None = None,
) -> PipelinePlan:
    """Decide what to do next. `observed` maps job name -> PyTorchJob (the pipeline's children)."""
    plans = plans or PlanJobs()
    spec = pipeline.spec
    actions: list[Action] = []
    stages: list[StageStatus] = []
    blocked = False  # an earlier stage has not Succeeded: later stages wait
    for stage in spec.stages:
        name = job_name(pipeline, stage)
        prev = previous.stage(stage.name) or StageStatus(name=stage.name)
        output = pipeline.output_of(stage)
        job = observed.get(name)
        if blocked:
            stages.append(StageStatus(name=stage.name, output_uri=output))
            continue
        status, action, done = _plan_stage(pipeline, stage, name, prev, job, output, now=now, owner=owner, plans=plans)
        stages.append(status)
        if action is not None:
            actions.append(action)
        blocked = not done
    new = summarize(stages, suspended=spec.suspend, previous=previous, now=now)
    if generation is not None:
        new = new.model_copy(update={"observed_generation": generation})
    return PipelinePlan(actions=tuple(actions), status=new)


def _plan_stage(
    pipeline: TrainingPipeline,
    stage: StageBase,
    name: str,
    prev: StageStatus,
    job: dict | None,
    output: str,
    *,
    now: str,
    owner: dict | None,
    plans: PlanJobs,
) -> tuple[StageStatus, Action | None, bool]:
    """(stage status, action or None, whether later stages may start)."""
    spec = pipeline.spec
    if job is None:
        if prev.phase in ("Succeeded",):
            return prev, None, True  # its job was removed after it finished (kubectl delete, TTL)
        # Retries spent: the pipeline stays Failed. A stage its memory plan failed is looked at
        # again: after a spec change it is planned anew.
        if prev.phase == "Failed" and prev.reason not in PLAN_FAILURES:
            return prev, None, False
        if spec.suspend:
            waiting = "Retrying" if prev.phase == "Retrying" else "Pending"  # keep the retry count
            return (
                with_phase(
                    prev,
                    waiting,
                    now,
                    output_uri=output,
                    reason="Suspended",
                    message="spec.suspend is true; the stage starts on resume",
                ),
                None,
                False,
            )
        plan = plan_job_name(pipeline, stage)
        gate = fit_gate(pipeline, stage, plans.jobs.get(plan), plans.messages.get(plan), owner=owner)
        if gate.state == "wait":
            waiting = "Retrying" if prev.phase == "Retrying" else "Pending"
            status = with_phase(
                prev, waiting, now, output_uri=output, reason=gate.reason, message=gate.message, conditions=[]
            )
            return status, gate.action, False
        if gate.state in ("refused", "failed"):
            refused = Condition(
                type=CONDITION, status="False", reason=gate.reason, message=gate.message, last_transition_time=now
            )
            same = prev.phase == "Failed" and prev.message == gate.message and prev.conditions
            status = with_phase(
                prev,
                "Failed",
                now,
                output_uri=output,
                reason=gate.reason,
                message=gate.message,
                conditions=prev.conditions if same else [refused],
            )
            return status, None, False
        # After a retry's delete the next attempt; after a lost job (deleted by hand, or the
        # operator stopped between delete and status write) the same attempt again.
        attempt = prev.attempt + 1 if prev.phase in ("Retrying", "Failed") or prev.attempt == 0 else prev.attempt
        body = build_job(pipeline, stage, attempt=attempt, owner=owner)
        configmap = stage_configmap(pipeline, stage)
        if owner is not None:
            configmap["metadata"]["ownerReferences"] = [owner]
        status = with_phase(
            prev,
            "Created",
            now,
            job_name=name,
            attempt=attempt,
            output_uri=output,
            reason="JobCreated",
            message=f"created PyTorchJob {name} (attempt {attempt})",
            start_time=now,
            completion_time=None,
            conditions=[],
        )
        return status, CreateJob(name=name, body=body, configmap=configmap), False
    if _is_deleting(job):
        phase = "Retrying" if prev.phase in ("Retrying", "Failed") else prev.phase
        return with_phase(prev, phase, now, reason=prev.reason or "JobDeleting"), None, False
    attempt = _attempt_of(job, prev.attempt)
    status = stage_from_job(prev, job, attempt=attempt, output_uri=output, now=now)
    if status.phase == "Succeeded":
        return status, None, True
    if status.phase == "Failed":
        retries = spec.retry_policy.max_retries
        if attempt <= retries:
            why = f"attempt {attempt} failed" + (f" ({status.reason}: {status.message})" if status.reason else "")
            retrying = _moved(
                prev, status, "Retrying", now, reason="RetryScheduled", message=f"{why}; retry {attempt} of {retries}"
            )
            return retrying, DeleteJob(name=name, reason=why), False
        return status, None, False
    action = _suspend_action(name, job, spec.suspend)
    if spec.suspend and status.phase != "Suspended":
        status = _moved(prev, status, "Suspended", now)
    return status, action, False


def _moved(prev: StageStatus, status: StageStatus, phase: str, now: str, **fields) -> StageStatus:
    """`status` with its phase overridden; the transition time is kept if `prev` was already there."""
    since = prev.last_transition_time if prev.phase == phase and prev.last_transition_time else now
    return status.model_copy(update={"phase": phase, "last_transition_time": since, **fields})


def plan_cleanup(observed: dict[str, dict], pipeline_name: str) -> list[DeleteJob]:
    """On deletion of a pipeline: every PyTorchJob labelled as its child is deleted."""
    return [
        DeleteJob(name=name, reason=f"pipeline {pipeline_name} deleted")
        for name, job in sorted(observed.items())
        if ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_PIPELINE) == pipeline_name
        and not _is_deleting(job)
    ]


__all__ = [
    "Action",
    "CreateJob",
    "DeleteJob",
    "SuspendJob",
    "PipelinePlan",
    "PlanJobs",
    "plan_pipeline",
    "plan_cleanup",
    "build_job",
    "ANNOTATION_SUSPENDED",
    "pipeline_from_body",
    "owner_reference",
]
