"""controller/plan_pipeline.py: (pipeline, observed PyTorchJobs, last status) -> actions + status. Tables, no cluster."""

import json
from dataclasses import dataclass, field

import pytest

from zhinao_k8s.api.status import PipelineStatus, StageStatus
from zhinao_k8s.api.v1alpha1 import TrainingPipeline
from zhinao_k8s.controller.plan_pipeline import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_INPUTS,
    ANNOTATION_SUSPENDED,
    CreateJob,
    DeleteJob,
    SuspendJob,
    owner_reference,
    pipeline_from_body,
    plan_cleanup,
    plan_pipeline,
)

NOW = "2026-01-01T01:00:00Z"
T1 = "2026-01-01T00:01:00Z"


def pipeline(max_retries: int = 1, suspend: bool = False) -> TrainingPipeline:
    return TrainingPipeline.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "team-a"},
            "spec": {
                "storage": {"uri": "s3://bucket/runs", "endpoint": "http://minio:9000"},
                "retryPolicy": {"maxRetries": max_retries},
                "suspend": suspend,
                "stages": [
                    {"name": "tok", "kind": "tokenizer", "inputs": {"corpus": "s3://bucket/corpus"}},
                    {"name": "pt", "kind": "pretrain", "inputs": {"tokenizer": "stage://tok"}},
                ],
            },
        }
    )


def job(
    name: str,
    *true: str,
    attempt: int = 1,
    suspend: bool = False,
    deleting: bool = False,
    message: str | None = None,
    suspended_by_pipeline: bool = True,
) -> dict:
    conds = [
        {
            "type": t,
            "status": "True",
            "lastTransitionTime": T1,
            "reason": f"PyTorchJob{t}",
            **({"message": message} if message else {}),
        }
        for t in true
    ]
    meta = {"name": name, "annotations": {ANNOTATION_ATTEMPT: str(attempt)}, "labels": {"zhinao.ai/pipeline": "demo"}}
    if suspend and suspended_by_pipeline:
        meta["annotations"][ANNOTATION_SUSPENDED] = "true"
    if deleting:
        meta["deletionTimestamp"] = T1
    return {"metadata": meta, "spec": {"runPolicy": {"suspend": suspend}}, "status": {"conditions": conds}}


def prev(*stages: tuple[str, str, int]) -> PipelineStatus:
    return PipelineStatus(stages=[StageStatus(name=n, phase=p, attempt=a) for n, p, a in stages])


@dataclass
class Case:
    name: str
    observed: dict
    previous: PipelineStatus = field(default_factory=PipelineStatus)
    max_retries: int = 1
    suspend: bool = False
    actions: list = field(default_factory=list)  # (type, job name[, suspend]) tuples
    phase: str = "Running"
    stage_phases: tuple[str, str] = ("Created", "Pending")


CASES = [
    Case("fresh pipeline creates stage 1", {}, actions=[("CreateJob", "demo-tok")]),
    Case(
        "stage 1 running: nothing to do",
        {"demo-tok": job("demo-tok", "Created", "Running")},
        stage_phases=("Running", "Pending"),
    ),
    Case(
        "stage 1 succeeded creates stage 2",
        {"demo-tok": job("demo-tok", "Succeeded")},
        actions=[("CreateJob", "demo-pt")],
        stage_phases=("Succeeded", "Created"),
    ),
    Case(
        "reconciling again never duplicates",
        {"demo-tok": job("demo-tok", "Succeeded"), "demo-pt": job("demo-pt", "Created")},
        stage_phases=("Succeeded", "Created"),
    ),
    Case(
        "failed with a retry left is deleted",
        {"demo-tok": job("demo-tok", "Failed")},
        actions=[("DeleteJob", "demo-tok")],
        stage_phases=("Retrying", "Pending"),
    ),
    Case(
        "waits while the failed job is being deleted",
        {"demo-tok": job("demo-tok", "Failed", deleting=True)},
        previous=prev(("tok", "Retrying", 1)),
        stage_phases=("Retrying", "Pending"),
    ),
    Case(
        "after the delete the next attempt is created",
        {},
        previous=prev(("tok", "Retrying", 1)),
        actions=[("CreateJob", "demo-tok")],
        stage_phases=("Created", "Pending"),
    ),
    Case(
        "retries spent: pipeline Failed, nothing created",
        {"demo-tok": job("demo-tok", "Failed", attempt=2)},
        phase="Failed",
        stage_phases=("Failed", "Pending"),
    ),
    Case(
        "no retries allowed",
        {"demo-tok": job("demo-tok", "Failed")},
        max_retries=0,
        phase="Failed",
        stage_phases=("Failed", "Pending"),
    ),
    Case(
        "failed and gone stays Failed",
        {},
        previous=prev(("tok", "Failed", 2)),
        phase="Failed",
        stage_phases=("Failed", "Pending"),
    ),
    Case(
        "succeeded job removed later is not rerun",
        {},
        previous=prev(("tok", "Succeeded", 1)),
        actions=[("CreateJob", "demo-pt")],
        stage_phases=("Succeeded", "Created"),
    ),
    Case(
        "all succeeded",
        {"demo-tok": job("demo-tok", "Succeeded"), "demo-pt": job("demo-pt", "Succeeded")},
        phase="Succeeded",
        stage_phases=("Succeeded", "Succeeded"),
    ),
    Case(
        "suspend a running job",
        {"demo-tok": job("demo-tok", "Running")},
        suspend=True,
        actions=[("SuspendJob", "demo-tok", True)],
        phase="Suspended",
        stage_phases=("Suspended", "Pending"),
    ),
    Case(
        "suspended job stays suspended",
        {"demo-tok": job("demo-tok", "Suspended", suspend=True)},
        suspend=True,
        phase="Suspended",
        stage_phases=("Suspended", "Pending"),
    ),
    Case(
        "suspended pipeline starts no stage",
        {"demo-tok": job("demo-tok", "Succeeded")},
        suspend=True,
        phase="Suspended",
        stage_phases=("Succeeded", "Pending"),
    ),
    Case(
        "resume unsuspends the job",
        {"demo-tok": job("demo-tok", "Suspended", suspend=True)},
        actions=[("SuspendJob", "demo-tok", False)],
        stage_phases=("Suspended", "Pending"),
    ),
    Case(
        "a job suspended by someone else (Kueue) stays suspended",
        {"demo-tok": job("demo-tok", "Created", "Suspended", suspend=True, suspended_by_pipeline=False)},
        stage_phases=("Suspended", "Pending"),
    ),
    Case(
        "suspending the pipeline leaves Kueue's suspension as it is",
        {"demo-tok": job("demo-tok", "Created", "Suspended", suspend=True, suspended_by_pipeline=False)},
        suspend=True,
        phase="Suspended",
        stage_phases=("Suspended", "Pending"),
    ),
    Case(
        "a suspended retry keeps its count",
        {},
        previous=prev(("tok", "Retrying", 1)),
        suspend=True,
        phase="Suspended",
        stage_phases=("Retrying", "Pending"),
    ),
]


def _key(action) -> tuple:
    if isinstance(action, SuspendJob):
        return ("SuspendJob", action.name, action.suspend)
    return (type(action).__name__, action.name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan(case: Case) -> None:
    out = plan_pipeline(pipeline(case.max_retries, case.suspend), case.observed, case.previous, now=NOW)
    assert [_key(a) for a in out.actions] == case.actions
    assert out.status.phase == case.phase
    assert tuple(s.phase for s in out.status.stages) == case.stage_phases


def test_plan_is_idempotent_once_applied() -> None:
    """Applying the plan's creates and planning again yields no further action."""
    p = pipeline()
    first = plan_pipeline(p, {}, PipelineStatus(), now=NOW)
    observed = {a.name: a.body for a in first.actions if isinstance(a, CreateJob)}
    second = plan_pipeline(p, observed, first.status, now=NOW)
    assert second.actions == ()
    assert second.status == first.status


def test_created_job_carries_owner_attempt_and_resolved_inputs() -> None:
    body = {"apiVersion": "zhinao.ai/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": "demo", "uid": "u-1"}}
    out = plan_pipeline(
        pipeline(), {"demo-tok": job("demo-tok", "Succeeded")}, PipelineStatus(), now=NOW, owner=owner_reference(body)
    )
    (create,) = out.actions
    meta = create.body["metadata"]
    assert meta["name"] == "demo-pt" and meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "zhinao.ai/v1alpha1",
            "kind": "TrainingPipeline",
            "name": "demo",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["annotations"][ANNOTATION_ATTEMPT] == "1"
    assert json.loads(meta["annotations"][ANNOTATION_INPUTS]) == {"tokenizer": "s3://bucket/runs/demo/tok"}
    # The stage spec goes into the ConfigMap the job mounts, owned by the pipeline too.
    assert create.configmap["metadata"]["name"] == "demo-pt-spec"
    assert create.configmap["metadata"]["ownerReferences"] == meta["ownerReferences"]
    assert json.loads(create.configmap["data"]["stage.json"])["inputs"] == {"tokenizer": "s3://bucket/runs/demo/tok"}
    assert out.status.stage("tok").output_uri == "s3://bucket/runs/demo/tok"


def test_retry_attempt_numbers_and_final_failure_message() -> None:
    p = pipeline(max_retries=1)
    s1 = plan_pipeline(
        p, {"demo-tok": job("demo-tok", "Failed", message="exit code 1")}, PipelineStatus(), now=NOW
    ).status
    assert s1.stage("tok").message == "attempt 1 failed (PyTorchJobFailed: exit code 1); retry 1 of 1"
    s2 = plan_pipeline(p, {}, s1, now=NOW)
    assert s2.actions[0].body["metadata"]["annotations"][ANNOTATION_ATTEMPT] == "2"
    s3 = plan_pipeline(
        p, {"demo-tok": job("demo-tok", "Failed", attempt=2, message="exit code 1")}, s2.status, now=NOW
    ).status
    assert (s3.phase, s3.reason) == ("Failed", "StageFailed")
    assert s3.message == "stage 'tok' failed after 2 attempt(s): exit code 1"


def test_generation_is_recorded() -> None:
    assert plan_pipeline(pipeline(), {}, PipelineStatus(), now=NOW, generation=7).status.observed_generation == 7


def test_plan_cleanup_deletes_only_own_children() -> None:
    observed = {
        "demo-tok": job("demo-tok", "Succeeded"),
        "demo-pt": job("demo-pt", "Running"),
        "demo-old": job("demo-old", "Failed", deleting=True),
        "other-x": {"metadata": {"name": "other-x", "labels": {"zhinao.ai/pipeline": "other"}}},
    }
    assert [a.name for a in plan_cleanup(observed, "demo")] == ["demo-pt", "demo-tok"]
    assert all(isinstance(a, DeleteJob) for a in plan_cleanup(observed, "demo"))


def test_pipeline_from_body_drops_server_metadata() -> None:
    body = {
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u", "resourceVersion": "5", "generation": 2},
        "spec": pipeline().spec.to_wire(),
    }
    assert pipeline_from_body(body).metadata.namespace == "ns"
