"""Memory fit of GPU stages: `plan` prints it, `validate` refuses a stage that does not fit."""

import pytest
import yaml
from typer.testing import CliRunner

from zhinao_k8s.api.load import parse_pipeline
from zhinao_k8s.cli.app import app
from zhinao_k8s.examples import example_text
from zhinao_k8s.fit import plan_stage, quantity_bytes, refusal

runner = CliRunner()


def _spec(tmp_path, gpu_memory: str, *, extra_stage: dict | None = None):
    doc = {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": "fit"},
        "spec": {
            "stages": [
                {"name": "tok", "kind": "tokenizer", "inputs": {"corpus": "file:///c"}, "params": {"vocabSize": 512}},
                {
                    "name": "pre",
                    "kind": "pretrain",
                    "resources": {"gpu": 1, "gpuMemory": gpu_memory},
                    "inputs": {"tokenizer": "stage://tok", "corpus": "file:///c"},
                    "params": {"seqLen": 64, "microBatchSize": 2},
                },
                *([extra_stage] if extra_stage else []),
            ]
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("text", "expected"), [("80G", 80 * 10**9), ("141Gi", 141 * 2**30), ("512Mi", 512 * 2**20), ("1.5T", 1.5e12)]
)
def test_gpu_memory_quantities(text, expected):
    assert quantity_bytes(text) == expected


def test_validate_refuses_a_stage_that_does_not_fit_and_names_it(tmp_path):
    # 4 GB is less than the planner's headroom alone, so even the tiny model cannot fit.
    result = runner.invoke(app, ["validate", str(_spec(tmp_path, "4G"))])
    assert result.exit_code == 2, result.output
    assert "spec.stages[1].resources.gpuMemory: stage 'pre' needs" in result.output
    assert "engine ddp on 1 ranks" in result.output
    assert runner.invoke(app, ["validate", "--no-plan", str(_spec(tmp_path, "4G"))]).exit_code == 0


def test_plan_prints_every_gpu_stage_and_validate_accepts_a_fit(tmp_path):
    reward = {
        "name": "rm",
        "kind": "reward",
        "resources": {"gpu": 1},
        "inputs": {"model": "stage://pre", "preferences": "file:///p.jsonl"},
    }
    spec = _spec(tmp_path, "16G", extra_stage=reward)
    result = runner.invoke(app, ["plan", str(spec)])
    assert result.exit_code == 0, result.output
    assert "pre" in result.output and "yes" in result.output
    assert "not planned: reward stages are not planned" in result.output
    assert runner.invoke(app, ["validate", str(spec)]).exit_code == 0


@pytest.mark.slow
def test_7b_at_4k_on_8_h100_fits_sharded_and_is_refused_under_ddp():
    doc = yaml.safe_load(example_text("pretrain-7b"))
    sharded = plan_stage(parse_pipeline(yaml.safe_dump(doc), "pretrain-7b"), 1)
    assert sharded.plan.engine == "fsdp" and sharded.plan.activation_checkpointing == "full"
    assert sharded.plan.n_params == pytest.approx(7.77e9, rel=0.001)
    assert not sharded.refused and sharded.plan.peak < 40e9

    doc["spec"]["stages"][1]["params"]["engine"] = "ddp"
    replicated = plan_stage(parse_pipeline(yaml.safe_dump(doc), "pretrain-7b"), 1)
    assert replicated.refused
    assert replicated.plan.breakdown["optimizer"] >= 8 * replicated.plan.n_params  # 62 GB of fp32 Adam moments
    assert "stage 'pretrain' needs" in refusal(replicated)
