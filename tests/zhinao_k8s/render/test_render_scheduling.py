"""Scheduling on a GPU cluster: pipeline-wide defaults, per-stage overrides, and every field rendered
where Kubeflow and Kubernetes read it, valid against the real PyTorchJob CRD and Pod schema."""

import pytest
from schemas import validate_pytorchjob

from zhinao_k8s.api.load import SpecError, parse_pipeline
from zhinao_k8s.api.scheduling import KUEUE_QUEUE_LABEL
from zhinao_k8s.render.pytorchjob import render_pipeline, render_pytorchjob

SPEC = """
apiVersion: zhinao.ai/v1alpha1
kind: TrainingPipeline
metadata: {name: llm, namespace: research}
spec:
  storage: {uri: s3://zhinao-data/runs, endpoint: https://s3.us-east-1.amazonaws.com, region: us-east-1}
  scheduling:
    nodeSelector: {node.kubernetes.io/instance-type: p5.48xlarge}
    tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms: [{matchExpressions: [{key: topology.kubernetes.io/zone, operator: In, values: [us-east-1a]}]}]
    priorityClassName: training-high
    imagePullSecrets: [registry-creds]
    serviceAccountName: zhinao-trainer
    queueName: team-a
    ttlSecondsAfterFinished: 86400
  stages:
  - name: tok
    kind: tokenizer
    inputs: {corpus: s3://zhinao-data/corpus}
    scheduling:
      nodeSelector: {pool: cpu}
      tolerations: []
  - name: pt
    kind: pretrain
    replicas: 4
    nprocPerNode: 8
    resources: {cpu: "64", memory: 900Gi, gpu: 8}
    inputs: {tokenizer: stage://tok, corpus: s3://zhinao-data/corpus}
    scheduling:
      schedulingPolicy: {minAvailable: 4, queue: gpu, priorityClass: training-high, scheduleTimeoutSeconds: 600}
      managedBy: kueue.x-k8s.io/multikueue
      rdma: {resource: rdma/ib, count: 1}
      ncclEnv: {NCCL_IB_HCA: mlx5, NCCL_SOCKET_IFNAME: eth0}
"""


@pytest.fixture(scope="module")
def jobs() -> dict[str, dict]:
    pipeline = parse_pipeline(SPEC)
    return {job["metadata"]["labels"]["zhinao.ai/stage"]: job for job in render_pipeline(pipeline)}


def pods(job: dict) -> list[dict]:
    return [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]


def test_every_scheduled_job_validates_against_the_crd_and_kubernetes(jobs):
    for job in jobs.values():
        validate_pytorchjob(job)


def test_pipeline_defaults_reach_every_replica_of_every_stage(jobs):
    pt = jobs["pt"]
    assert len(pods(pt)) == 2  # Master and Worker
    for pod in pods(pt):
        assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert pod["priorityClassName"] == "training-high"
        assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
        assert pod["serviceAccountName"] == "zhinao-trainer"
    for job in jobs.values():
        assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
        assert job["spec"]["runPolicy"]["suspend"] is True  # until Kueue admits it
        assert job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 86400


def test_a_stage_field_replaces_the_pipeline_field_whole(jobs):
    (tok,) = pods(jobs["tok"])
    assert tok["nodeSelector"] == {"pool": "cpu"}  # replaced, not merged
    assert "tolerations" not in tok  # cleared by an empty list
    assert tok["serviceAccountName"] == "zhinao-trainer"  # not set by the stage: the pipeline's


def test_gang_scheduling_multikueue_rdma_and_nccl(jobs):
    pt, tok = jobs["pt"], jobs["tok"]
    run_policy = pt["spec"]["runPolicy"]
    assert run_policy["schedulingPolicy"] == {
        "minAvailable": 4,
        "queue": "gpu",
        "priorityClass": "training-high",
        "scheduleTimeoutSeconds": 600,
    }
    assert run_policy["managedBy"] == "kueue.x-k8s.io/multikueue"
    assert "schedulingPolicy" not in tok["spec"]["runPolicy"] and "managedBy" not in tok["spec"]["runPolicy"]
    for pod in pods(pt):
        (container,) = pod["containers"]
        assert container["resources"]["requests"]["rdma/ib"] == container["resources"]["limits"]["rdma/ib"] == "1"
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NCCL_IB_HCA"] == "mlx5" and env["NCCL_SOCKET_IFNAME"] == "eth0"
    (tok_container,) = pods(tok)[0]["containers"]
    assert "add" not in tok_container["securityContext"]["capabilities"]


def test_without_scheduling_nothing_changes():
    pipeline = parse_pipeline(
        SPEC.split("  scheduling:\n")[0]
        + "  stages: [{name: tok, kind: tokenizer, inputs: {corpus: s3://zhinao-data/corpus}}]\n"
    )
    job = render_pytorchjob(pipeline, pipeline.stage("tok"))
    (pod,) = pods(job)
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName", "serviceAccountName"} & set(pod)
    assert set(job["spec"]["runPolicy"]) == {"backoffLimit", "cleanPodPolicy"}
    assert KUEUE_QUEUE_LABEL not in job["metadata"]["labels"]


@pytest.mark.parametrize(
    "scheduling, problem",
    [
        ("{ncclEnv: {LD_PRELOAD: x}}", "only NCCL_* variable names"),
        ("{managedBy: someone-else}", "managedBy"),
        ("{schedulingPolicy: {minAvailable: 0}}", "minAvailable"),
        ("{tolerations: [{operator: Sometimes}]}", "operator"),
        ("{serviceAccountName: Not_A_Name}", "serviceAccountName"),
    ],
)
def test_bad_scheduling_is_one_line_at_the_field(scheduling: str, problem: str):
    text = (
        SPEC.split("  scheduling:\n")[0]
        + f"  scheduling: {scheduling}\n  stages: [{{name: tok, kind: tokenizer, inputs: {{corpus: s3://zhinao-data/corpus}}}}]\n"
    )
    with pytest.raises(SpecError) as err:
        parse_pipeline(text)
    assert any("spec.scheduling" in line and problem in line for line in err.value.problems), err.value.problems
