"""Whether a GPU stage may start: its memory plan Job's verdict -> open, wait or refuse.

Pure, like plan_pipeline.py (which asks this module before it creates a stage's PyTorchJob): the plan
Job (render/plan_job.py) and its pod's termination message are observed by `reconcile.py`.

- No plan needed (no GPUs, or `spec.memoryPlan: false`): open.
- No plan Job: create it, and wait. A Job of another hash (the stage, its model's lineage or the
  image changed) is stale: delete it, and wait for the new one.
- The Job has not finished: wait. Complete with a verdict: `fits` and `skipped` open the gate,
  `refused` fails the stage with the plan's numbers. Failed (or Complete without a verdict, e.g.
  its pod was removed): the plan could not run; the stage fails with what the pod said.
"""

from dataclasses import dataclass, field
from typing import Literal

from zhinao_k8s.api.v1alpha1 import StageBase, TrainingPipeline
from zhinao_k8s.render.plan_job import (
    ANNOTATION_PLAN_HASH,
    PlanResult,
    needs_plan,
    plan_hash,
    plan_job_name,
    render_plan_job,
)

REASON_PLANNING = "MemoryPlanning"
REASON_REFUSED = "MemoryPlanRefused"
REASON_PLAN_FAILED = "MemoryPlanFailed"
PLAN_FAILURES = (REASON_REFUSED, REASON_PLAN_FAILED)
CONDITION = "MemoryPlanned"
"""The stage condition a refusal or a failed plan sets (status False), with the message."""
SKIP_HINT = "set spec.memoryPlan to false to start the stage without a plan"


@dataclass(frozen=True)
class CreatePlanJob:
    name: str
    body: dict = field(repr=False)


@dataclass(frozen=True)
class DeletePlanJob:
    name: str
    reason: str


@dataclass(frozen=True)
class Gate:
    state: Literal["open", "wait", "refused", "failed"]
    message: str | None = None
    action: CreatePlanJob | DeletePlanJob | None = None

    @property
    def reason(self) -> str:
        return {"wait": REASON_PLANNING, "refused": REASON_REFUSED, "failed": REASON_PLAN_FAILED}.get(self.state, "")


def finished(job: dict) -> str | None:
    """ "Complete" or "Failed" once the batch Job has ended, else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return cond["type"]
    return None


def fit_gate(
    pipeline: TrainingPipeline,
    stage: StageBase,
    plan_job: dict | None,
    termination_message: str | None,
    *,
    owner: dict | None,
) -> Gate:
    """`plan_job`: the stage's plan Job as observed (None: there is none); `termination_message`:
    its pod's container's, once the Job has finished (None if not read or none)."""
    if not needs_plan(pipeline, stage):
        return Gate("open")
    name = plan_job_name(pipeline, stage)
    if plan_job is None:
        body = render_plan_job(pipeline, stage)
        if owner is not None:
            body["metadata"]["ownerReferences"] = [owner]
        return Gate("wait", f"planning GPU memory in Job {name}", CreatePlanJob(name, body))
    meta = plan_job.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Gate("wait", f"waiting for the stale plan Job {name} to go")
    if (meta.get("annotations") or {}).get(ANNOTATION_PLAN_HASH) != plan_hash(pipeline, stage):
        return Gate("wait", "the stage changed: planning again", DeletePlanJob(name, "planned for another spec"))
    end = finished(plan_job)
    if end is None:
        return Gate("wait", f"planning GPU memory in Job {name}")
    result = PlanResult.from_json(termination_message)
    if end == "Complete" and result is None:
        return Gate("wait", f"the verdict of Job {name} is gone: planning again", DeletePlanJob(name, "no verdict"))
    if end == "Failed" or result is None:
        said = (termination_message or "no message").strip().splitlines()[-1:] or ["no message"]
        return Gate("failed", f"memory plan Job {name} failed: {said[0]} ({SKIP_HINT})")
    if result.verdict == "refused":
        return Gate("refused", result.message)
    return Gate("open", result.message)
