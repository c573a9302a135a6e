"""Ablations end to end: real kopf + the real kubernetes client against kmock's API emulator.

The operator runs both controllers: the Ablation's (prepare job -> runs -> evaluate job) and the
TrainingPipeline's, which runs each run's stages. The test plays the training operator: it sets
the PyTorchJobs' conditions by patching their status.
"""

from __future__ import annotations

import kmock
from schemas import validate_pytorchjob
from servers.kube_mock import KubeMock
from servers.operator_thread import NS, Operator, set_job_condition, wait_for

from zhinao_k8s.controller.k8s import Cluster
from zhinao_k8s.controller.plan_pipeline import ANNOTATION_ATTEMPT

RUNS = ["abl-a-s0", "abl-a-s1", "abl-b-s0", "abl-b-s1"]


def ablation_doc(name: str = "abl") -> dict:
    return {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "Ablation",
        "metadata": {"name": name, "labels": {"team": "data"}},
        "spec": {
            "storage": {"uri": "s3://bucket/runs", "endpoint": "http://minio:9000"},
            "base": {"corpus": "s3://bucket/base"},
            "recipes": [{"name": "a", "dataset": "s3://bucket/a"}, {"name": "b", "dataset": "s3://bucket/b"}],
            "seeds": 2,
            "proxy": {
                "modelSize": "tiny",
                "tokens": 40960,
                "seqLen": 64,
                "microBatchSize": 4,
                "gradAccumSteps": 1,
                "replicas": 1,
                "nprocPerNode": 1,
                "gpu": 0,
                "cpu": "1",
                "memory": "2Gi",
                "warmupSteps": 10,
            },
        },
    }


def status(cluster: Cluster, name: str = "abl") -> dict:
    return (cluster.get_ablation(NS, name) or {}).get("status") or {}


def creates(kube: KubeMock, plural: str) -> list[str]:
    """Every create request kmock served for `plural` (including refused duplicates)."""

    def read(emulator):
        return sorted(
            r.data["metadata"]["name"]
            for r in emulator
            if r.resource is not None and r.resource.plural == plural and r.action == kmock.action.CREATE
        )

    return kube.call(read)


def metric(text: str, series: str) -> float:
    """The value of one series in a /metrics page (0 when absent)."""
    line = next((ln for ln in text.splitlines() if ln.startswith(series + " ")), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def finish_runs(cluster: Cluster, names: list[str]) -> None:
    """Succeed every stage job of these runs until the TrainingPipeline controller calls them Succeeded."""

    def all_done() -> bool:
        for name in names:
            for job_name, job in cluster.list_jobs(NS, name).items():
                if not (job.get("status") or {}).get("conditions"):
                    set_job_condition(cluster, job_name, "Succeeded")
        return all((cluster.get_pipeline(NS, n) or {}).get("status", {}).get("phase") == "Succeeded" for n in names)

    wait_for(f"runs {names} Succeeded", all_done, timeout=30)


def test_ablation_prepares_trains_evaluates_and_survives_a_restart(kube: KubeMock, operator: Operator) -> None:
    cluster = operator.cluster
    doc = ablation_doc()
    doc["spec"]["recipes"][0] = {"name": "a", "data": {}}  # processed by the data pipeline first
    doc["spec"]["corpus"] = "s3://bucket/raw"
    doc["spec"]["dataJobs"] = {"replicas": 2}
    uid = cluster.create_ablation(NS, doc)["metadata"]["uid"]

    # The data pipeline, owned by the Ablation; the TrainingPipeline controller runs its data stage.
    data = wait_for("data pipeline", lambda: cluster.get_pipeline(NS, "abl-data"))
    assert data["metadata"]["ownerReferences"][0]["uid"] == uid
    assert "abl-prepare" not in cluster.list_ablation_jobs(NS, "abl"), "no preparation before the data is processed"
    data_job = wait_for("data job", lambda: cluster.list_jobs(NS, "abl-data").get("abl-data-recipe-a"))
    validate_pytorchjob(data_job)
    assert data_job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1  # 2 ranks: Master + 1 Worker
    finish_runs(cluster, ["abl-data"])

    prepare = wait_for("prepare job", lambda: cluster.list_ablation_jobs(NS, "abl").get("abl-prepare"))
    validate_pytorchjob(prepare)
    assert prepare["metadata"]["ownerReferences"][0]["uid"] == uid
    wait_for("Preparing", lambda: status(cluster).get("phase") == "Preparing")
    assert list(cluster.list_ablation_runs(NS, "abl")) == ["abl-data"], "no run before the data is prepared"

    set_job_condition(cluster, "abl-prepare", "Succeeded")
    runs = wait_for("data pipeline and 4 runs", lambda: len(r := cluster.list_ablation_runs(NS, "abl")) == 5 and r)
    assert sorted(runs) == sorted(["abl-data", *RUNS])
    for _name, body in runs.items():
        assert body["metadata"]["ownerReferences"][0]["uid"] == uid
        assert (
            body["metadata"]["labels"]["team"] == "data" and body["metadata"]["labels"]["zhinao.ai/ablation"] == "abl"
        )
    wait_for("Training", lambda: status(cluster).get("phase") == "Training")

    # The TrainingPipeline controller runs the runs; half of them finish, then the operator restarts.
    wait_for("run jobs", lambda: all(cluster.list_jobs(NS, n) for n in RUNS))
    finish_runs(cluster, RUNS[:2])
    wait_for("2/4", lambda: status(cluster).get("progress") == "2/4")
    operator.stop()
    operator.start()
    finish_runs(cluster, RUNS[2:])

    evaluate = wait_for("evaluate job", lambda: cluster.list_ablation_jobs(NS, "abl").get("abl-evaluate"))
    validate_pytorchjob(evaluate)
    assert (
        evaluate["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"][-1] == "evaluate"
    )
    wait_for("Evaluating", lambda: (s := status(cluster)).get("phase") == "Evaluating" and s["runs"]["succeeded"] == 4)
    set_job_condition(cluster, "abl-evaluate", "Succeeded")

    final = wait_for("Succeeded", lambda: (s := status(cluster)).get("phase") == "Succeeded" and s)
    assert final["report"] == "s3://bucket/runs/abl/report/report.md"
    assert final["runs"] == {"total": 4, "succeeded": 4, "failed": 0}
    assert [(c["type"], c["status"]) for c in final["conditions"]] == [
        ("Prepared", "True"),
        ("Trained", "True"),
        ("Evaluated", "True"),
    ]
    assert final["completionTime"] and final["startTime"]
    # Everything was created exactly once, across the restart.
    assert creates(kube, "trainingpipelines") == sorted(["abl-data", *RUNS])
    assert creates(kube, "pytorchjobs") == sorted(
        ["abl-data-recipe-a", "abl-evaluate", "abl-prepare", *(f"{r}-pretrain" for r in RUNS)]
    )

    # The ablation path records the operator's metrics as the pipeline path does (metrics live in
    # the process, so these count from the restart on).
    code, metrics = operator.get(operator.metrics_port, "/metrics")
    assert code == 200
    assert 'zhinao_operator_ablations{phase="Succeeded"} 1.0' in metrics
    assert 'zhinao_operator_ablations{phase="Training"} 0.0' in metrics
    assert 'zhinao_operator_actions_total{action="CreateJob"}' in metrics  # abl-evaluate, after the restart
    assert metric(metrics, 'zhinao_operator_reconciles_total{kind="Ablation",trigger="child"}') >= 1
    assert metric(metrics, 'zhinao_operator_reconcile_seconds_count{kind="Ablation"}') >= 1


def test_a_failed_run_fails_the_ablation_naming_it(kube: KubeMock, operator: Operator) -> None:
    cluster = operator.cluster
    cluster.create_ablation(NS, ablation_doc())
    wait_for("prepare job", lambda: cluster.list_ablation_jobs(NS, "abl").get("abl-prepare"))
    set_job_condition(cluster, "abl-prepare", "Succeeded")
    wait_for("run job", lambda: cluster.list_jobs(NS, "abl-b-s1").get("abl-b-s1-pretrain"))

    # The run's stage fails twice (its pipeline retries once), so the run is Failed.
    set_job_condition(cluster, "abl-b-s1-pretrain", "Failed", "OOMKilled")
    wait_for(
        "retry",
        lambda: (
            (j := cluster.list_jobs(NS, "abl-b-s1").get("abl-b-s1-pretrain"))
            and j["metadata"]["annotations"][ANNOTATION_ATTEMPT] == "2"
            and "status" not in j
        ),
    )
    set_job_condition(cluster, "abl-b-s1-pretrain", "Failed", "OOMKilled")

    final = wait_for("Failed", lambda: (s := status(cluster)).get("phase") == "Failed" and s)
    assert final["reason"] == "RunFailed"
    assert final["message"] == "run abl-b-s1 failed: stage 'pretrain' failed after 2 attempt(s): OOMKilled"
    assert final["runs"]["failed"] == 1
    assert "abl-evaluate" not in cluster.list_ablation_jobs(NS, "abl")

    # The by-phase gauge counts it while it exists, and forgets it once it is deleted.
    def gauge() -> float:
        return metric(operator.get(operator.metrics_port, "/metrics")[1], 'zhinao_operator_ablations{phase="Failed"}')

    wait_for("Failed counted", lambda: gauge() == 1)
    cluster.custom.delete_namespaced_custom_object("zhinao.ai", "v1alpha1", NS, "ablations", "abl")
    wait_for("deleted ablation forgotten", lambda: gauge() == 0)


def test_an_invalid_ablation_is_reported_not_run(kube: KubeMock, operator: Operator) -> None:
    cluster = operator.cluster
    bad = ablation_doc("bad")
    bad["spec"]["recipes"][1]["name"] = "a"  # kmock does not enforce the CRD schema; the models do
    cluster.create_ablation(NS, bad)
    st = wait_for("InvalidSpec", lambda: (s := status(cluster, "bad")).get("reason") == "InvalidSpec" and s)
    assert st["phase"] == "Failed" and "recipe names used twice: a" in st["message"]
    assert cluster.list_ablation_jobs(NS, "bad") == {}
    # The status is patched just before the reconcile raises, so the error count follows shortly.
    errors = 'zhinao_operator_reconcile_errors_total{error="PermanentError",kind="Ablation"}'
    wait_for("error counted", lambda: metric(operator.get(operator.metrics_port, "/metrics")[1], errors) >= 1)
