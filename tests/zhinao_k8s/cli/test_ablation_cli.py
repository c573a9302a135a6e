"""`zhinao-k8s ablation` sub-app: render, report and spec errors (no training)."""

import json

import yaml
from typer.testing import CliRunner

from zhinao.ablation.results import markdown
from zhinao.ablation.stats import analyse
from zhinao_k8s.cli.ablation import app
from zhinao_k8s.examples import example_text

runner = CliRunner()


def test_render_prints_the_data_jobs_then_pretrain_and_sft_jobs_per_recipe_and_seed(tmp_path):
    spec = tmp_path / "ablation.yaml"
    spec.write_text(example_text("ablation-demo"))
    result = runner.invoke(app, ["render", str(spec)])
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.output))
    jobs = [o for o in objects if o["kind"] == "PyTorchJob"]
    # the base and 4 recipes processed by data stages, then 4 recipes x 3 seeds x (pretrain, sft)
    assert len(jobs) == 5 + 4 * 3 * 2 and len(objects) == 2 * len(jobs)  # each with its stage spec ConfigMap
    names = [j["metadata"]["name"] for j in jobs]
    assert names[:3] == ["abl-demo-data-base", "abl-demo-data-recipe-dedup-on", "abl-demo-data-recipe-dedup-off"]
    assert names[5:7] == ["abl-demo-dedup-on-s0-pretrain", "abl-demo-dedup-on-s0-sft"]
    assert jobs[0]["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1  # dataJobs.replicas: 2


def test_an_invalid_spec_exits_2_with_field_paths(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(example_text("ablation-demo").replace("experimentalShare: 0.5", "experimentalShare: 1.5"))
    result = runner.invoke(app, ["render", str(spec)])
    assert result.exit_code == 2
    assert "spec.experimentalShare: must be < 1" in result.output


def test_report_prints_ranking_means_and_detected_pairs(tmp_path):
    rep = {
        "ablation": "abl",
        "recipes": ["a", "b"],
        "runs": [{}] * 6,
        **analyse(
            {
                "valid_loss": {"a": [5.0, 5.01, 4.99], "b": [5.5, 5.51, 5.49]},
                "bench/avg": {"a": [0.5, 0.6, 0.4], "b": [0.55, 0.45, 0.5]},
            }
        ),
    }
    (tmp_path / "report.json").write_text(json.dumps(rep))
    result = runner.invoke(app, ["report", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("a - b" in ln and "yes" in ln for ln in lines)  # the valid_loss pair is detected
    assert any("bench/avg" in ln and "insensitive" in ln for ln in lines)
    assert "| valid_loss |" in markdown(rep)


def test_report_of_a_missing_directory_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "no report.json" in result.output
