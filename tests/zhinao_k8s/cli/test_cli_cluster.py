"""`zhinao-k8s submit/status/list/logs/delete` with typer's CliRunner against kmock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from servers.kube_mock import KubeMock  # tests/ is on sys.path (rootdir conftest)
from typer.testing import CliRunner

from zhinao_k8s.cli import cluster as cli
from zhinao_k8s.cli.cluster import format_api_error, parse_metrics
from zhinao_k8s.runner.local import free_port

NS = "team-a"
SPEC = {
    "apiVersion": "zhinao.ai/v1alpha1",
    "kind": "TrainingPipeline",
    "metadata": {"name": "demo"},
    "spec": {
        "stages": [
            {"name": "tok", "kind": "tokenizer", "inputs": {"corpus": "file:///data/corpus"}},
            {"name": "pt", "kind": "pretrain", "inputs": {"tokenizer": "stage://tok"}},
        ],
    },
}
METRICS = """# HELP zhinao_train_loss Training loss of the last step.
# TYPE zhinao_train_loss gauge
zhinao_train_loss{pipeline="demo",stage="pt",rank="0"} 2.3456
zhinao_tokens_per_second{pipeline="demo",stage="pt",rank="0"} 12345.0
zhinao_step{pipeline="demo",stage="pt",rank="0"} 42.0
"""


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer(pretty_exceptions_enable=False)

    @root.callback()
    def _root() -> None:
        pass

    cli.register(root)
    return root


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def invoke(app: typer.Typer, kube: KubeMock, *args: str):
    return CliRunner().invoke(app, [*args, "--kubeconfig", str(kube.kubeconfig)])


def test_submit_list_and_readable_conflict(app, kube: KubeMock, spec_file: Path) -> None:
    r = invoke(app, kube, "submit", str(spec_file))
    assert r.exit_code == 0, r.output
    assert "trainingpipeline.zhinao.ai/demo created in namespace team-a" in r.output  # the context's namespace
    assert kube.cluster.get_pipeline(NS, "demo")["spec"] == SPEC["spec"]  # the document as the user wrote it

    r = invoke(app, kube, "submit", str(spec_file))
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines[0].startswith("error: API server: 409"), r.output
    assert isinstance(r.exception, SystemExit), r.exc_info  # a handled failure, not an escaped exception

    r = invoke(app, kube, "list", "-o", "json")
    assert json.loads(r.output) == [{"name": "demo", "namespace": NS, "phase": "Pending", "stage": "", "progress": ""}]
    r = invoke(app, kube, "list", "-A")
    assert r.exit_code == 0 and "demo" in r.output and "Pending" in r.output


def test_submit_rejects_an_invalid_spec_before_the_cluster(app, kube: KubeMock, tmp_path: Path) -> None:
    bad = json.loads(json.dumps(SPEC))
    bad["spec"]["stages"][1]["replicas"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    r = invoke(app, kube, "submit", str(path), "-n", "other")
    assert r.exit_code == 2
    assert "stages[1].replicas: must be >= 1" in r.output
    assert kube.cluster.list_pipelines(None) == []


def _running(kube: KubeMock) -> None:
    c = kube.cluster
    c.create_pipeline(NS, json.loads(json.dumps(SPEC)))
    c.patch_pipeline_status(
        NS,
        "demo",
        {
            "phase": "Running",
            "currentStage": "pt",
            "progress": "1/2",
            "stages": [
                {"name": "tok", "phase": "Succeeded", "attempt": 1, "jobName": "demo-tok"},
                {"name": "pt", "phase": "Running", "attempt": 1, "jobName": "demo-pt"},
            ],
        },
    )
    labels = {"training.kubeflow.org/job-name": "demo-pt", "training.kubeflow.org/replica-type": "master"}
    c.core.create_namespaced_pod(
        NS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "demo-pt-master-0", "labels": labels},
            "spec": {"containers": [{"name": "pytorch", "image": "x"}]},
        },
    )

    def reactions(emulator):
        emulator[f"get /api/v1/namespaces/{NS}/pods/demo-pt-master-0:9400/proxy/metrics"] << METRICS.encode()
        emulator[f"get /api/v1/namespaces/{NS}/pods/demo-pt-master-0/log"] << b"step 42 loss 2.3456\n"

    kube.call(reactions)


def test_status_shows_stages_and_live_loss_and_throughput(app, kube: KubeMock) -> None:
    _running(kube)
    r = invoke(app, kube, "status", "demo", "-n", NS)
    assert r.exit_code == 0, r.output
    assert "phase Running" in r.output and "progress 1/2" in r.output
    assert "Succeeded" in r.output and "demo-pt" in r.output
    assert "2.3456" in r.output and "12,345" in r.output and " 42 " in r.output

    r = invoke(app, kube, "status", "demo", "-o", "json")
    doc = json.loads(r.output)
    assert doc["phase"] == "Running" and doc["live"] == {
        "pt": {"zhinao_train_loss": 2.3456, "zhinao_tokens_per_second": 12345.0, "zhinao_step": 42.0}
    }
    r = invoke(app, kube, "status", "demo", "-o", "yaml")
    assert yaml.safe_load(r.output)["currentStage"] == "pt"


def test_status_shows_the_last_error_line_of_each_failed_replica(app, kube: KubeMock) -> None:
    c = kube.cluster
    c.create_pipeline(NS, json.loads(json.dumps(SPEC)))
    stages = [{"name": "tok", "phase": "Restarting", "attempt": 1, "jobName": "demo-tok"}]
    c.patch_pipeline_status(NS, "demo", {"phase": "Running", "currentStage": "tok", "stages": stages})
    message = "rank 1: ValueError: corpus shard 7 is not gzip\nrank 0: RuntimeError: Connection closed by peer\n"
    restarted = {"restartCount": 1, "lastState": {"terminated": {"exitCode": 1, "message": message}}}
    healthy = {"restartCount": 0, "state": {"running": {}}}
    for replica, container in (("worker-0", restarted), ("master-0", healthy)):
        labels = {"training.kubeflow.org/job-name": "demo-tok", "training.kubeflow.org/replica-type": replica[:-2]}
        c.core.create_namespaced_pod(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"demo-tok-{replica}", "labels": labels},
                "spec": {"containers": [{"name": "pytorch", "image": "x"}]},
                "status": {
                    "containerStatuses": [{"name": "pytorch", "image": "x", "imageID": "", "ready": False, **container}]
                },
            },
        )
    r = invoke(app, kube, "status", "demo", "-n", NS)
    assert r.exit_code == 0, r.output
    assert "tok demo-tok-worker-0: rank 1: ValueError: corpus shard 7 is not gzip" in r.output
    assert "master-0:" not in r.output
    doc = json.loads(invoke(app, kube, "status", "demo", "-n", NS, "-o", "json").output)
    assert doc["errors"] == {"tok": ["demo-tok-worker-0: rank 1: ValueError: corpus shard 7 is not gzip"]}


def test_logs_of_a_stage(app, kube: KubeMock) -> None:
    _running(kube)
    r = invoke(app, kube, "logs", "demo", "--stage", "pt")
    assert r.exit_code == 0, r.output
    assert r.output == "step 42 loss 2.3456\n"
    r = invoke(app, kube, "logs", "demo", "--stage", "tok")
    assert r.exit_code == 1 and "no master pod for PyTorchJob team-a/demo-tok" in r.output
    r = invoke(app, kube, "logs", "demo", "--stage", "nope")
    assert r.exit_code == 1 and "has no stage 'nope'" in r.output


def test_delete_and_not_found(app, kube: KubeMock) -> None:
    kube.cluster.create_pipeline(NS, json.loads(json.dumps(SPEC)))
    r = invoke(app, kube, "delete", "demo")
    assert r.exit_code == 0 and "deleted" in r.output
    r = invoke(app, kube, "delete", "demo")
    assert r.exit_code == 1 and "error: trainingpipeline team-a/demo not found" in r.output
    r = invoke(app, kube, "status", "demo")
    assert r.exit_code == 1 and "not found" in r.output


def test_unreachable_api_server_is_one_line(app, tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "x",
                "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
                "users": [{"name": "x", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
            }
        )
    )
    from kubernetes.client import Configuration

    r = CliRunner().invoke(app, ["list", "--kubeconfig", str(config)], env={"ZHINAO_DEBUG": "0"})
    assert r.exit_code == 1
    assert r.output.startswith("error: cannot reach the API server"), r.output
    assert isinstance(r.exception, SystemExit), r.exc_info  # a handled failure, not an escaped exception
    assert Configuration  # imported: the client is installed


def test_format_api_error() -> None:
    from kubernetes.client.exceptions import ApiException

    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({"message": 'trainingpipelines.zhinao.ai is forbidden: User "bob" cannot create'})
    assert (
        format_api_error(exc)
        == 'API server: 403 Forbidden: trainingpipelines.zhinao.ai is forbidden: User "bob" cannot create'
    )


def test_parse_metrics() -> None:
    assert parse_metrics(METRICS, ("zhinao_train_loss", "zhinao_step")) == {
        "zhinao_train_loss": 2.3456,
        "zhinao_step": 42.0,
    }
    assert parse_metrics("garbage\n# x\n", ("zhinao_train_loss",)) == {}
