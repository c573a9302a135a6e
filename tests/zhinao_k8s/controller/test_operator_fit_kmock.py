"""The memory plan gate end to end: real kopf + the real kubernetes client against kmock's API
emulator, which validates the plan Job against Kubernetes' own schema. The test plays the Job
controller (the plan pod's termination message, then the Job's condition)."""

from __future__ import annotations

import time

import kmock
from servers.kube_mock import KubeMock
from servers.operator_thread import NS, Operator, finish_plan_job, set_job_condition, wait_for

from zhinao_k8s.controller.plan_pipeline import ANNOTATION_ATTEMPT
from zhinao_k8s.render.plan_job import PlanResult

REFUSAL = (
    "spec.stages[0].resources.gpuMemory: stage 'pt' needs 160.9 GB per GPU (parameters 31.1, gradients 31.1, "
    "optimizer 62.2, activations 20.4, temporaries 16.1) with engine ddp on 8 ranks"
)


def pipeline_doc(name: str, *, memory_plan: bool = True) -> dict:
    gpu = {"resources": {"gpu": 8, "gpuMemory": "80G"}, "nprocPerNode": 8}
    return {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": name},
        "spec": {
            "storage": {"uri": "s3://bucket/runs", "endpoint": "http://minio:9000"},
            "retryPolicy": {"maxRetries": 1},
            "memoryPlan": memory_plan,
            "stages": [
                {"name": "pt", "kind": "pretrain", "inputs": {"tokenizer": "s3://bucket/tok"}, **gpu},
                {"name": "sft", "kind": "sft", "inputs": {"model": "stage://pt", "data": "s3://bucket/chat"}, **gpu},
            ],
        },
    }


def status(cluster, name: str) -> dict:
    return (cluster.get_pipeline(NS, name) or {}).get("status") or {}


def creates(kube: KubeMock, plural: str) -> list[str]:
    """Every create request kmock served for `plural` (including refused duplicates)."""

    def read(emulator):
        return [
            r.data["metadata"]["name"]
            for r in emulator
            if r.resource is not None and r.resource.plural == plural and r.action == kmock.action.CREATE
        ]

    return kube.call(read)


def test_a_stage_that_does_not_fit_fails_the_pipeline_and_no_job_is_created(kube: KubeMock, operator: Operator) -> None:
    cluster = operator.cluster
    cluster.create_pipeline(NS, pipeline_doc("big"))
    plan = wait_for("plan Job", lambda: cluster.list_plan_jobs(NS, "big").get("big-pt-plan"))
    assert plan["spec"]["template"]["spec"]["containers"][0]["args"] == ["-m", "zhinao_k8s.jobs.plan_stage", "pt"]
    waiting = wait_for("MemoryPlanning", lambda: (s := status(cluster, "big")).get("stages") and s)
    assert (waiting["stages"][0]["phase"], waiting["stages"][0]["reason"]) == ("Pending", "MemoryPlanning")
    assert waiting["message"] == "planning GPU memory in Job big-pt-plan"

    finish_plan_job(cluster, "big-pt-plan", PlanResult("pt", "refused", REFUSAL).to_json())
    final = wait_for("Failed", lambda: (s := status(cluster, "big")).get("phase") == "Failed" and s)
    assert final["message"] == f"stage 'pt' failed before it started: {REFUSAL}"
    stage = final["stages"][0]
    assert (stage["phase"], stage["reason"]) == ("Failed", "MemoryPlanRefused")
    assert [(c["type"], c["status"]) for c in stage["conditions"]] == [("MemoryPlanned", "False")]
    time.sleep(0.5)
    assert creates(kube, "pytorchjobs") == []
    assert creates(kube, "jobs") == ["big-pt-plan"], "the refusal is final for this spec: no second plan"


def test_a_fitting_stage_starts_and_its_verdict_survives_a_restart_and_a_retry(
    kube: KubeMock, operator: Operator
) -> None:
    cluster = operator.cluster
    cluster.create_pipeline(NS, pipeline_doc("fits"))
    wait_for("plan Job", lambda: cluster.list_plan_jobs(NS, "fits").get("fits-pt-plan"))
    time.sleep(0.3)
    assert cluster.list_jobs(NS, "fits") == {}, "no PyTorchJob before the verdict"
    finish_plan_job(cluster, "fits-pt-plan", PlanResult("pt", "fits", "stage 'pt' needs 22.7 GB").to_json())
    wait_for("PyTorchJob", lambda: cluster.list_jobs(NS, "fits").get("fits-pt"))

    operator.stop()
    operator.start()
    time.sleep(1.0)  # it resumes and reconciles
    set_job_condition(cluster, "fits-pt", "Failed", "exit code 1")  # attempt 1 fails: a retry
    wait_for(
        "attempt 2",
        lambda: (
            (j := cluster.list_jobs(NS, "fits").get("fits-pt"))
            and j["metadata"]["annotations"][ANNOTATION_ATTEMPT] == "2"
        ),
    )
    assert creates(kube, "jobs") == ["fits-pt-plan"], "the cached verdict is reused: no second plan"

    # Without the plan, a GPU stage's job is created at once.
    cluster.create_pipeline(NS, pipeline_doc("noplan", memory_plan=False))
    wait_for("PyTorchJob", lambda: cluster.list_jobs(NS, "noplan").get("noplan-pt"))
    assert cluster.list_plan_jobs(NS, "noplan") == {}
