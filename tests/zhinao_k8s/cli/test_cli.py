"""The offline CLI: validate, render and the summary lines users read."""

import re

import yaml
from schemas import validate_k8s, validate_pytorchjob
from typer.testing import CliRunner

from zhinao_k8s.cli.app import app
from zhinao_k8s.cli.local import headline
from zhinao_k8s.examples import example_text

runner = CliRunner()


def test_validate_reports_every_problem_with_its_field_path_and_exit_code_2(tmp_path):
    spec = yaml.safe_load(example_text("demo"))
    spec["spec"]["stages"][2]["replicas"] = 0
    spec["spec"]["stages"][2]["params"]["typo"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit), result.exc_info  # the CLI exited; nothing escaped it
    assert "spec.stages[2].replicas: must be >= 1" in result.output
    assert "spec.stages[2].params.typo: unknown field" in result.output


def test_render_prints_valid_configmaps_and_pytorchjobs_for_every_stage(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(example_text("demo"))
    result = runner.invoke(app, ["render", str(path)])
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.output))
    jobs = [o for o in objects if o["kind"] == "PyTorchJob"]
    assert [j["metadata"]["name"] for j in jobs] == [
        f"demo-{s}" for s in ("data", "tokenizer", "pretrain", "sft", "rm", "rlhf")
    ]
    for job in jobs:
        validate_pytorchjob(job)
    for configmap in (o for o in objects if o["kind"] == "ConfigMap"):
        validate_k8s(configmap)


def test_render_stage_renders_that_stage_only_and_names_an_unknown_one(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(example_text("demo"))
    result = runner.invoke(app, ["render", str(path), "--stage", "sft"])
    assert result.exit_code == 0, result.output
    assert [o["metadata"]["name"] for o in yaml.safe_load_all(result.output)] == ["demo-sft-spec", "demo-sft"]
    result = runner.invoke(app, ["render", str(path), "--stage", "nope"])
    assert result.exit_code == 2 and "no stage nope" in result.output and "Traceback" not in result.output


def test_a_missing_file_is_one_readable_line():
    result = runner.invoke(app, ["render", "does-not-exist.yaml"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.exc_info
    assert "cannot read file" in result.output


def test_help_lists_every_command():
    # The rows of the help's Commands panel (the intro text above it names most commands too).
    result = runner.invoke(app, ["--help"])
    panel = result.output.split("Commands")[1]
    rows = re.findall(r"^│ ([a-z]+) ", panel, re.M)
    assert rows == [
        "validate",
        "render",
        "run",
        "demo",
        "submit",
        "status",
        "list",
        "logs",
        "delete",
        "operator",
        "data",
        "ablation",
    ]


def test_headline_picks_the_numbers_of_each_stage_kind():
    assert (
        headline({"tokens": 1000, "loss_first": 8.0, "loss_last": 5.0, "tokens_per_second": 2000.0, "mfu_mean": 0.25})
        == "1,000 tokens, loss 8.000 -> 5.000, 2,000 tokens/s, MFU 25.0%"
    )
    assert "held-out accuracy 0.62 -> 0.81" in headline(
        {"held_out_accuracy_before": 0.625, "held_out_accuracy": 0.8125}
    )
    rl = {
        "eval_before": {"greedy": {"rule": 0.5}, "sampled": {"rule": 0.3}},
        "eval_after": {"greedy": {"rule": 0.7}, "sampled": {"rule": 0.4}},
    }
    assert headline(rl) == "checked reward greedy 0.50 -> 0.70, sampled 0.30 -> 0.40"
    hacked = {**rl, "reward_guard": {"sentence": "the checked reward did NOT rise with the RM score (...)"}}
    assert headline(hacked).endswith("sampled 0.30 -> 0.40, the checked reward did NOT rise with the RM score (...)")
