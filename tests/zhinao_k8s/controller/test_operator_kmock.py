"""The operator end to end: real kopf + the real kubernetes client against kmock's API emulator.

The test plays the training operator: it sets each PyTorchJob's conditions by patching its status.
"""

from __future__ import annotations

import json
import time

import kmock
from servers.kube_mock import KubeMock  # tests/ is on sys.path (rootdir conftest)
from servers.operator_thread import NS, Operator, set_job_condition, wait_for

from zhinao_k8s.controller.k8s import Cluster
from zhinao_k8s.controller.plan_pipeline import ANNOTATION_ATTEMPT


def pipeline_doc(name: str = "demo", **spec) -> dict:
    return {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": name},
        "spec": {
            "storage": {"uri": "s3://bucket/runs", "endpoint": "http://minio:9000"},
            "retryPolicy": {"maxRetries": 1},
            "stages": [
                {"name": "tok", "kind": "tokenizer", "inputs": {"corpus": "s3://bucket/corpus"}},
                {"name": "pt", "kind": "pretrain", "inputs": {"tokenizer": "stage://tok"}},
            ],
            **spec,
        },
    }


def invalid_pipeline_doc(name: str) -> dict:
    """Valid for the CRD's OpenAPI schema, refused by the models: two stages named alike."""
    doc = pipeline_doc(name)
    doc["spec"]["stages"][1]["name"] = "tok"
    return doc


def job(cluster: Cluster, name: str) -> dict | None:
    return cluster.list_jobs(NS, "demo").get(name)


def status(cluster: Cluster, name: str = "demo") -> dict:
    return (cluster.get_pipeline(NS, name) or {}).get("status") or {}


def job_creates(kube: KubeMock) -> list[str]:
    """Every create request for a PyTorchJob that kmock served (including refused duplicates)."""

    def read(emulator):
        return [
            r.data["metadata"]["name"]
            for r in emulator  # a kmock handler iterates its requests
            if r.resource is not None and r.resource.plural == "pytorchjobs" and r.action == kmock.action.CREATE
        ]

    return kube.call(read)


def job_delete_propagation(kube: KubeMock) -> list[str | None]:
    """The propagationPolicy of every PyTorchJob delete request kmock served."""

    def read(emulator):
        return [
            (r.data or {}).get("propagationPolicy") or r.params.get("propagationPolicy")
            for r in emulator
            if r.resource is not None and r.resource.plural == "pytorchjobs" and r.action == kmock.action.DELETE
        ]

    return kube.call(read)


def test_pipeline_runs_retries_survives_a_restart_and_fails(kube: KubeMock, operator: Operator) -> None:
    cluster = operator.cluster
    created = cluster.create_pipeline(NS, pipeline_doc())
    uid = created["metadata"]["uid"]

    tok = wait_for("stage 1 job", lambda: job(cluster, "demo-tok"))
    assert tok["metadata"]["ownerReferences"][0]["uid"] == uid
    assert wait_for("Running", lambda: status(cluster).get("phase") == "Running")
    set_job_condition(cluster, "demo-tok", "Running")
    wait_for("stage 1 Running", lambda: status(cluster).get("stages", [{}])[0].get("phase") == "Running")

    set_job_condition(cluster, "demo-tok", "Succeeded")
    pt = wait_for("stage 2 job", lambda: job(cluster, "demo-pt"))
    env = {
        e["name"]: e.get("value")
        for e in pt["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    }
    # The stage spec travels in a ConfigMap the operator created first, owned by the pipeline.
    assert env["ZHINAO_STAGE_SPEC_FILE"] == "/etc/zhinao/stage.json"
    spec_map = cluster.core.read_namespaced_config_map("demo-pt-spec", NS)
    assert json.loads(spec_map.data["stage.json"])["inputs"] == {"tokenizer": "s3://bucket/runs/demo/tok"}
    assert spec_map.metadata.owner_references[0].uid == uid
    wait_for("progress 1/2", lambda: status(cluster).get("progress") == "1/2")

    # The operator goes away in the middle and a new one (fresh memory) takes over.
    operator.stop()
    operator.start()
    time.sleep(1.0)  # let it resume and reconcile
    assert sorted(job_creates(kube)) == ["demo-pt", "demo-tok"], "a restart must not create anything again"

    # Attempt 1 of stage 2 fails: the job is deleted and created again as attempt 2.
    set_job_condition(cluster, "demo-pt", "Failed", "exit code 1")
    retried = wait_for(
        "retry",
        lambda: (j := job(cluster, "demo-pt")) and j["metadata"]["annotations"][ANNOTATION_ATTEMPT] == "2" and j,
    )
    assert "status" not in retried
    # The failed attempt was deleted in the foreground: its pods and Services go before the job does.
    assert job_delete_propagation(kube) == ["Foreground"]
    wait_for("stage 2 attempt 2", lambda: status(cluster)["stages"][1].get("attempt") == 2)

    # Attempt 2 fails too: retries are spent, the pipeline is Failed with the reason.
    set_job_condition(cluster, "demo-pt", "Failed", "exit code 1")
    final = wait_for("Failed", lambda: (s := status(cluster)).get("phase") == "Failed" and s)
    assert final["reason"] == "StageFailed"
    assert final["message"] == "stage 'pt' failed after 2 attempt(s): exit code 1"
    assert final["stages"][0]["phase"] == "Succeeded" and final["stages"][1]["phase"] == "Failed"
    assert [c["type"] for c in final["stages"][1]["conditions"]] == ["Created", "Failed"]
    assert final["completionTime"]
    assert sorted(job_creates(kube)) == ["demo-pt", "demo-pt", "demo-tok"]

    code, body = operator.get(operator.health_port, "/healthz")
    assert code == 200
    code, metrics = operator.get(operator.metrics_port, "/metrics")
    assert 'zhinao_operator_pipelines{phase="Failed"} 1.0' in metrics
    assert 'zhinao_operator_actions_total{action="DeleteJob"} 1.0' in metrics
    assert "zhinao_operator_reconcile_seconds_count" in metrics
    # Both failed attempts of stage 2 happened after the restart (metrics live in the process).
    assert 'zhinao_operator_stage_duration_seconds_count{kind="pretrain",phase="Failed"} 2.0' in metrics


def test_suspend_resume_delete_and_invalid_spec(kube: KubeMock, operator: Operator) -> None:
    cluster = operator.cluster
    cluster.create_pipeline(NS, pipeline_doc())
    wait_for("stage 1 job", lambda: job(cluster, "demo-tok"))
    set_job_condition(cluster, "demo-tok", "Running")

    patch = cluster.custom.patch_namespaced_custom_object
    patch("zhinao.ai", "v1alpha1", NS, "trainingpipelines", "demo", {"spec": {"suspend": True}})
    wait_for("job suspended", lambda: job(cluster, "demo-tok")["spec"]["runPolicy"].get("suspend") is True)
    wait_for("Suspended", lambda: status(cluster).get("phase") == "Suspended")
    set_job_condition(cluster, "demo-tok", "Succeeded")
    time.sleep(0.5)
    assert job(cluster, "demo-pt") is None, "a suspended pipeline starts no stage"

    patch("zhinao.ai", "v1alpha1", NS, "trainingpipelines", "demo", {"spec": {"suspend": False}})
    wait_for("stage 2 after resume", lambda: job(cluster, "demo-pt"))

    # Deleting the pipeline deletes its jobs first (the finalizer), then the pipeline goes.
    cluster.delete_pipeline(NS, "demo")
    wait_for("children deleted", lambda: not cluster.list_jobs(NS, "demo"))
    wait_for("pipeline gone", lambda: cluster.get_pipeline(NS, "demo") is None)

    # A spec the CRD schema admits (kmock enforces it, as the API server does) but the models
    # reject is reported, not run.
    cluster.create_pipeline(NS, invalid_pipeline_doc("bad"))
    st = wait_for("InvalidSpec", lambda: (s := status(cluster, "bad")).get("reason") == "InvalidSpec" and s)
    assert st["phase"] == "Failed" and "stages[1].name: 'tok' is already stages[0]" in st["message"]
