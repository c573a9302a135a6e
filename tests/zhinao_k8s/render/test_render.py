"""Rendered PyTorchJobs are valid for the real CRD and Kubernetes, and carry what the trainer needs."""

import json

import pytest
import yaml
from schemas import validate_k8s, validate_pytorchjob

from zhinao.config.runtime import StageRuntime
from zhinao_k8s.api.load import parse_pipeline
from zhinao_k8s.render.pytorchjob import render_pipeline, render_pytorchjob, stage_configmap

SPEC = """
apiVersion: zhinao.ai/v1alpha1
kind: TrainingPipeline
metadata: {name: llm, namespace: research}
spec:
  image: registry.example.com/zhinao/trainer:0.1.0
  storage:
    uri: s3://zhinao-data/runs
    endpoint: http://minio.minio:9000
    credentials: {secretRef: {name: s3-creds}}
  stages:
  - name: tok
    kind: tokenizer
    inputs: {corpus: s3://zhinao-data/corpus}
  - name: pt
    kind: pretrain
    replicas: 4
    nprocPerNode: 8
    backoffLimit: 5
    resources: {cpu: "64", memory: 900Gi, gpu: 8}
    inputs: {tokenizer: stage://tok, corpus: s3://zhinao-data/corpus}
    params: {modelSize: 7b, seqLen: 4096, zeroStage: 2}
"""


@pytest.fixture(scope="module")
def pipeline():
    return parse_pipeline(SPEC)


def env_of(job: dict, replica: str = "Master") -> list[dict]:
    return job["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["containers"][0]["env"]


def jobs(pipeline) -> list[dict]:
    return [obj for obj in render_pipeline(pipeline) if obj["kind"] == "PyTorchJob"]


def test_every_rendered_object_validates_against_the_crd_and_kubernetes(pipeline):
    objects = render_pipeline(pipeline)
    assert [o["kind"] for o in objects] == ["ConfigMap", "PyTorchJob"] * 2
    for obj in objects:
        if obj["kind"] == "PyTorchJob":
            validate_pytorchjob(obj)
        else:
            validate_k8s(obj)


def test_validation_really_rejects_a_broken_job(pipeline):
    import jsonschema

    job = render_pytorchjob(pipeline, pipeline.stage("pt"))
    job["spec"]["runPolicy"]["backoffLimit"] = "five"
    with pytest.raises(jsonschema.ValidationError):
        validate_pytorchjob(job)


def test_master_and_workers_split_the_replicas(pipeline):
    job = render_pytorchjob(pipeline, pipeline.stage("pt"))
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    assert all(s["restartPolicy"] == "OnFailure" for s in specs.values())
    assert job["spec"]["nprocPerNode"] == "8"
    assert job["spec"]["runPolicy"] == {"backoffLimit": 5, "cleanPodPolicy": "Running"}
    single = render_pytorchjob(pipeline, pipeline.stage("tok"))
    assert set(single["spec"]["pytorchReplicaSpecs"]) == {"Master"}


def test_names_and_labels_are_deterministic(pipeline):
    a, b = jobs(pipeline), jobs(pipeline)
    assert a == b
    assert [j["metadata"]["name"] for j in a] == ["llm-tok", "llm-pt"]
    assert a[1]["metadata"]["namespace"] == "research"
    assert a[1]["metadata"]["labels"]["zhinao.ai/pipeline"] == "llm"


def test_stage_runtime_travels_in_a_mounted_configmap_with_resolved_inputs(pipeline):
    job = render_pytorchjob(pipeline, pipeline.stage("pt"))
    configmap = stage_configmap(pipeline, pipeline.stage("pt"))
    rt = StageRuntime.model_validate_json(configmap["data"]["stage.json"])
    assert rt.inputs == {"tokenizer": "s3://zhinao-data/runs/llm/tok", "corpus": "s3://zhinao-data/corpus"}
    assert rt.upstream == ["tokenizer"]
    assert rt.output == "s3://zhinao-data/runs/llm/pt" and rt.params["zeroStage"] == 2
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert {"name": "stage-spec", "configMap": {"name": configmap["metadata"]["name"]}} in pod["volumes"]
    for container in pod["initContainers"] + pod["containers"]:
        env = {e["name"]: e for e in container["env"]}
        assert env["ZHINAO_STAGE_SPEC_FILE"]["value"] == "/etc/zhinao/stage.json"
        assert env["ZHINAO_S3_ENDPOINT"]["value"] == "http://minio.minio:9000"
        assert {"name": "stage-spec", "mountPath": "/etc/zhinao", "readOnly": True} in container["volumeMounts"]
    assert "zeroStage" not in json.dumps(job)  # the params are in no environment variable


def test_only_stages_that_read_another_stage_wait_for_it(pipeline):
    tok = render_pytorchjob(pipeline, pipeline.stage("tok"))["spec"]["pytorchReplicaSpecs"]["Master"]
    assert "initContainers" not in tok["template"]["spec"]
    pt = render_pytorchjob(pipeline, pipeline.stage("pt"))["spec"]["pytorchReplicaSpecs"]["Master"]
    (wait,) = pt["template"]["spec"]["initContainers"]
    assert wait["command"] == ["python", "-m", "zhinao.wait_inputs"]
    assert wait["image"] == "registry.example.com/zhinao/trainer:0.1.0"
    assert wait["securityContext"]["readOnlyRootFilesystem"] is True


def test_restart_policy_exit_code_is_rendered_for_every_replica():
    spec = SPEC.replace("backoffLimit: 5", "backoffLimit: 5\n    restartPolicy: ExitCode")
    job = render_pytorchjob(parse_pipeline(spec), parse_pipeline(spec).stage("pt"))
    validate_pytorchjob(job)
    assert {s["restartPolicy"] for s in job["spec"]["pytorchReplicaSpecs"].values()} == {"ExitCode"}


def test_render_only_named_stages(pipeline):
    objects = render_pipeline(pipeline, only=["pt"])
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ConfigMap", "llm-pt-spec"),
        ("PyTorchJob", "llm-pt"),
    ]


def test_credentials_come_only_from_the_secret(pipeline, monkeypatch):
    # Credentials in the renderer's own environment (where `zhinao-k8s render` or the operator
    # runs) must not travel into the jobs: only the Secret reference does.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIARENDERERSOWNKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "renderers-own-secret")
    for job in jobs(pipeline):
        env = {e["name"]: e for e in env_of(job)}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[var]
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
        text = json.dumps(job)
        assert "AKIARENDERERSOWNKEY" not in text and "renderers-own-secret" not in text


def test_pods_are_non_root_locked_down_and_scraped(pipeline):
    job = render_pytorchjob(pipeline, pipeline.stage("pt"))
    template = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    pod, container = template["spec"], template["spec"]["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert container["name"] == "pytorch"
    assert {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"} in container["ports"]


def test_yaml_output_has_no_anchors(pipeline):
    from zhinao_k8s.cli.local import to_yaml

    # One object referenced twice in a document, as a caller may build it (PyYAML's default dumper
    # writes it once as &id001 and then *id001, which kubectl users should not have to read).
    shared = {"name": "ZHINAO_X", "value": "1"}
    objects = render_pipeline(pipeline)
    pt = objects[3]
    env_of(pt, "Master").append(shared)
    env_of(pt, "Worker").append(shared)
    text = to_yaml(objects)
    assert "&id" not in text and "*id" not in text
    assert list(yaml.safe_load_all(text)) == objects
