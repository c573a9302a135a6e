"""An Ablation's prepare and evaluate PyTorchJobs: prepare on `dataJobs.replicas` pods, one rank each,
evaluate on one; both valid against the real PyTorchJob CRD and the Kubernetes pod schema."""

import json

import jsonschema
import pytest
from schemas import validate_pytorchjob

from zhinao_k8s.api.ablation import Ablation
from zhinao_k8s.render.ablation import ENV_ABLATION_SPEC, render_step_job


def ablation(**spec) -> Ablation:
    return Ablation.model_validate(
        {
            "metadata": {"name": "abl", "namespace": "team-a"},
            "spec": {
                "storage": {"uri": "s3://bucket/runs", "endpoint": "http://minio:9000"},
                "base": {"corpus": "s3://bucket/base"},
                "recipes": [{"name": "a", "dataset": "s3://bucket/a"}, {"name": "b", "dataset": "s3://bucket/b"}],
                **spec,
            },
        }
    )


@pytest.mark.parametrize(
    "spec,workers",
    [({}, 3), ({"dataJobs": {"replicas": 6}}, 5), ({"dataJobs": {"replicas": 1}}, None)],
    ids=["default 4 pods", "6 pods", "one pod"],
)
def test_prepare_runs_on_the_data_jobs_replicas(spec: dict, workers: int | None) -> None:
    job = render_step_job(ablation(**spec), "prepare")
    validate_pytorchjob(job)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {}).get("replicas") == workers
    for replica in replicas.values():  # every pod runs the same step with the whole spec
        container = replica["template"]["spec"]["containers"][0]
        assert container["args"] == ["-m", "zhinao_k8s.jobs.ablation_step", "prepare"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert json.loads(env[ENV_ABLATION_SPEC])["spec"]["recipes"][0]["name"] == "a"


def test_evaluate_runs_on_one_pod() -> None:
    job = render_step_job(ablation(dataJobs={"replicas": 6}), "evaluate")
    validate_pytorchjob(job)
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def test_the_crd_schema_catches_a_broken_worker_spec() -> None:
    job = render_step_job(ablation(), "prepare")
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "three"
    with pytest.raises(jsonschema.ValidationError):
        validate_pytorchjob(job)
