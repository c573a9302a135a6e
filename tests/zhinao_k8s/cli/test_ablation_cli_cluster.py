"""`zhinao-k8s ablation submit/status/report NAME` with typer's CliRunner against kmock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from servers.kube_mock import KubeMock  # tests/ is on sys.path (rootdir conftest)
from typer.testing import CliRunner

from zhinao.ablation.stats import analyse
from zhinao_k8s.cli.ablation import app

NS = "team-a"
SPEC = {
    "apiVersion": "zhinao.ai/v1alpha1",
    "kind": "Ablation",
    "metadata": {"name": "abl"},
    "spec": {
        "base": {"corpus": "file:///data/base"},
        "recipes": [{"name": "a", "dataset": "file:///data/a"}, {"name": "b", "dataset": "file:///data/b"}],
        "seeds": 2,
    },
}


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def invoke(kube: KubeMock, *args: str):
    return CliRunner().invoke(app, [*args, "--kubeconfig", str(kube.kubeconfig)], env={"COLUMNS": "200"})


def test_submit_creates_the_document_as_written_and_a_conflict_is_one_line(kube: KubeMock, spec_file: Path) -> None:
    r = invoke(kube, "submit", str(spec_file))
    assert r.exit_code == 0, r.output
    assert "ablation.zhinao.ai/abl created in namespace team-a" in r.output  # the context's namespace
    assert kube.cluster.get_ablation(NS, "abl")["spec"] == SPEC["spec"]

    r = invoke(kube, "submit", str(spec_file))
    assert r.exit_code == 1
    assert r.output.startswith("error: API server: 409"), r.output
    assert isinstance(r.exception, SystemExit), r.exc_info  # a handled failure, not an escaped exception


def test_submit_rejects_an_invalid_spec_before_the_cluster(kube: KubeMock, tmp_path: Path) -> None:
    bad = json.loads(json.dumps(SPEC))
    bad["spec"]["recipes"][1]["name"] = "a"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    r = invoke(kube, "submit", str(path), "-n", "other")
    assert r.exit_code == 2
    assert "spec: recipe names used twice: a" in r.output
    assert kube.cluster.get_ablation("other", "abl") is None


def _training(kube: KubeMock) -> None:
    c = kube.cluster
    c.create_ablation(NS, json.loads(json.dumps(SPEC)))
    c.patch_ablation_status(
        NS,
        "abl",
        {
            "phase": "Failed",
            "progress": "1/4",
            "reason": "RunFailed",
            "message": "run abl-a-s1 failed: OOMKilled",
            "runs": {"total": 4, "succeeded": 1, "failed": 1},
        },
    )
    for name, phase in (("abl-a-s0", "Succeeded"), ("abl-a-s1", "Failed")):
        c.create_pipeline(
            NS,
            {
                "apiVersion": "zhinao.ai/v1alpha1",
                "kind": "TrainingPipeline",
                "metadata": {
                    "name": name,
                    "labels": {"zhinao.ai/ablation": "abl", "zhinao.ai/recipe": "a", "zhinao.ai/seed": name[-1]},
                },
                "spec": {"stages": [{"name": "pretrain", "kind": "pretrain"}]},
            },
        )
        c.patch_pipeline_status(NS, name, {"phase": phase, "currentStage": "pretrain", "progress": "1/1"})
    c.create_pipeline(
        NS,
        {
            "apiVersion": "zhinao.ai/v1alpha1",
            "kind": "TrainingPipeline",
            "metadata": {"name": "other"},
            "spec": {"stages": [{"name": "pretrain", "kind": "pretrain"}]},
        },
    )


def test_status_shows_the_phase_the_runs_and_why_it_failed(kube: KubeMock) -> None:
    _training(kube)
    r = invoke(kube, "status", "abl", "-n", NS)
    assert r.exit_code == 0, r.output
    assert "phase Failed  runs 1/4, 1 failed" in r.output
    assert "RunFailed: run abl-a-s1 failed: OOMKilled" in r.output
    rows = [line.split() for line in r.output.splitlines() if line.strip().startswith("abl-")]
    assert [row[:4] for row in rows] == [["abl-a-s0", "a", "0", "Succeeded"], ["abl-a-s1", "a", "1", "Failed"]]

    doc = json.loads(invoke(kube, "status", "abl", "-o", "json").output)
    assert doc["runs"] == {"total": 4, "succeeded": 1, "failed": 1}
    assert [p["name"] for p in doc["pipelines"]] == ["abl-a-s0", "abl-a-s1"]  # its runs only


def test_report_of_an_ablation_on_the_cluster(kube: KubeMock, tmp_path: Path) -> None:
    c = kube.cluster
    c.create_ablation(NS, json.loads(json.dumps(SPEC)))
    r = invoke(kube, "report", "abl")
    assert r.exit_code == 1 and r.output.startswith("error: ablation team-a/abl has no report yet (phase Pending)")
    r = invoke(kube, "report", "nope")
    assert r.exit_code == 1 and r.output.startswith("error: ablation team-a/nope not found")

    folder = tmp_path / "store" / "abl" / "report"
    folder.mkdir(parents=True)
    rep = {
        "ablation": "abl",
        "recipes": ["a", "b"],
        "runs": [{}] * 4,
        **analyse({"valid_loss": {"a": [5.0, 5.01], "b": [5.5, 5.51]}}),
    }
    (folder / "report.json").write_text(json.dumps(rep))
    c.patch_ablation_status(NS, "abl", {"phase": "Succeeded", "report": f"file://{folder}/report.md"})
    r = invoke(kube, "report", "abl", "-n", NS)
    assert r.exit_code == 0, r.output
    assert "ablation abl: 4 runs, recipes a, b" in r.output
    assert any("a - b" in line for line in r.output.splitlines())
