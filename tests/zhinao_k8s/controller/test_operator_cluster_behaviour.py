"""What a real cluster needs from the operator, end to end against kmock: Kueue's suspension is left
alone, an invalid pipeline is reported once, a finished one is no longer polled, and the chart's
default cluster-wide mode works as well as one namespace."""

from __future__ import annotations

import time

import kmock
import pytest
from servers.kube_mock import KubeMock
from servers.operator_thread import NS, Operator, set_job_condition, wait_for
from test_operator_kmock import invalid_pipeline_doc, job, pipeline_doc, status

from zhinao_k8s.api.scheduling import KUEUE_QUEUE_LABEL
from zhinao_k8s.controller.handlers import RECONCILE_INTERVAL
from zhinao_k8s.controller.plan_pipeline import ANNOTATION_SUSPENDED

JOBS = ("kubeflow.org", "v1", NS, "pytorchjobs")
PIPELINES = ("zhinao.ai", "v1alpha1", NS, "trainingpipelines")


def requests_for(kube: KubeMock, plural: str, name: str) -> list[kmock.Request]:
    return kube.call(
        lambda emulator: [
            r for r in emulator if r.resource is not None and r.resource.plural == plural and r.name == name
        ]
    )


def suspended(cluster, name: str) -> bool:
    return bool(job(cluster, name)["spec"]["runPolicy"].get("suspend"))


def test_a_job_suspended_by_kueue_stays_suspended(kube: KubeMock, operator: Operator) -> None:
    cluster = operator.cluster
    cluster.create_pipeline(NS, pipeline_doc(scheduling={"queueName": "team-a-gpus"}))
    tok = wait_for("stage 1 job", lambda: job(cluster, "demo-tok"))
    assert tok["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a-gpus"
    assert tok["spec"]["runPolicy"]["suspend"] is True, "created suspended: Kueue admits it"
    set_job_condition(cluster, "demo-tok", "Created")  # a job event, then two safety-net reconciles
    time.sleep(2.5 * RECONCILE_INTERVAL)
    assert suspended(cluster, "demo-tok"), "the operator resumed a job Kueue holds"

    # Kueue admits it; the pipeline's own suspend and resume still work, and only undo its own.
    cluster.custom.patch_namespaced_custom_object(*JOBS, "demo-tok", {"spec": {"runPolicy": {"suspend": False}}})
    cluster.custom.patch_namespaced_custom_object(*PIPELINES, "demo", {"spec": {"suspend": True}})
    wait_for("suspended by the pipeline", lambda: suspended(cluster, "demo-tok"))
    assert job(cluster, "demo-tok")["metadata"]["annotations"][ANNOTATION_SUSPENDED] == "true"
    cluster.custom.patch_namespaced_custom_object(*PIPELINES, "demo", {"spec": {"suspend": False}})
    wait_for("resumed by the pipeline", lambda: not suspended(cluster, "demo-tok"))
    assert ANNOTATION_SUSPENDED not in (job(cluster, "demo-tok")["metadata"].get("annotations") or {})

    # Kueue preempts it (suspends it again): it stays suspended.
    cluster.custom.patch_namespaced_custom_object(*JOBS, "demo-tok", {"spec": {"runPolicy": {"suspend": True}}})
    time.sleep(2.5 * RECONCILE_INTERVAL)
    assert suspended(cluster, "demo-tok")


def test_an_invalid_pipeline_is_reported_once(kube: KubeMock, operator: Operator, caplog) -> None:
    """One status write and one error: kopf's per-object error log is what it posts as an Event
    on a real cluster (kmock receives no Events, so the log is read here)."""
    cluster = operator.cluster
    cluster.create_pipeline(NS, invalid_pipeline_doc("bad"))
    wait_for("InvalidSpec", lambda: status(cluster, "bad").get("reason") == "InvalidSpec")
    time.sleep(2.5 * RECONCILE_INTERVAL)  # two timer intervals
    status_writes = [r for r in requests_for(kube, "trainingpipelines", "bad") if r.subresource == "status"]
    assert len(status_writes) == 1, [r.data for r in status_writes]
    errors = [r.getMessage() for r in caplog.records if "invalid spec" in r.getMessage()]
    assert len(errors) == 1, errors


def test_a_finished_pipeline_is_not_polled(kube: KubeMock, operator: Operator) -> None:
    cluster = operator.cluster
    cluster.create_pipeline(NS, pipeline_doc())
    for name in ("demo-tok", "demo-pt"):
        wait_for(name, lambda name=name: job(cluster, name))
        set_job_condition(cluster, name, "Succeeded")
    wait_for("Succeeded", lambda: status(cluster).get("phase") == "Succeeded")
    time.sleep(0.5)
    before = len(requests_for(kube, "trainingpipelines", "demo"))
    time.sleep(2.5 * RECONCILE_INTERVAL)
    after = requests_for(kube, "trainingpipelines", "demo")[before:]
    assert not after, [(r.method, r.subresource) for r in after]


@pytest.mark.parametrize("namespaces", [(), (NS,)], ids=["cluster-wide (chart default)", "one namespace"])
def test_the_operator_runs_a_pipeline_cluster_wide_or_in_one_namespace(kube: KubeMock, namespaces) -> None:
    op = Operator(kube.cluster, namespaces=namespaces)
    op.start()
    try:
        cluster = op.cluster
        cluster.create_pipeline(NS, pipeline_doc())
        wait_for("stage 1 job", lambda: job(cluster, "demo-tok"))
        set_job_condition(cluster, "demo-tok", "Succeeded")
        wait_for("stage 2 job", lambda: job(cluster, "demo-pt"))
        wait_for("progress 1/2", lambda: status(cluster).get("progress") == "1/2")
    finally:
        op.stop()
