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


def _longctx_plan(sequence_parallel: int, gpus: int):
    """The long-context example's longctx stage at a tiny model shape (its plan takes seconds, the
    7B's minutes), activation checkpointing off so that the activations stay in the peak."""
    doc = yaml.safe_load(example_text("longctx-7b"))
    tokenizer, pretrain, longctx = doc["spec"]["stages"]
    tokenizer["params"]["vocabSize"] = 32000
    pretrain["params"]["modelSize"] = "tiny"
    longctx["nprocPerNode"] = gpus
    longctx["params"].update(
        engine="fsdp", activationCheckpointing="off", seqLen=8192, sequenceParallel=sequence_parallel
    )
    return plan_stage(parse_pipeline(yaml.safe_dump(doc), "longctx-7b"), 2).plan


def test_longctx_plan_splits_activations_over_sp_and_shards_the_model_over_dp_x_sp():
    sp2, sp8, sp8_dp2 = _longctx_plan(2, 8), _longctx_plan(8, 8), _longctx_plan(8, 16)
    assert (sp2.ranks, sp8.ranks, sp8_dp2.ranks) == ("8 = dp 4 x sp 2", "8 = dp 1 x sp 8", "16 = dp 2 x sp 8")
    assert (sp2.tokens_per_rank, sp8.tokens_per_rank) == (4096, 1024)
    # More ranks per sequence: fewer tokens per rank, smaller activations, the same shards.
    assert sp8.breakdown["activations"] < 0.75 * sp2.breakdown["activations"]
    assert sp8.breakdown["optimizer"] == sp2.breakdown["optimizer"]
    # Twice the ranks at the same sp: FSDP shards over dp x sp, so the Adam moments halve and the
    # parameter shards shrink; the activations do not change.
    assert sp8_dp2.breakdown["optimizer"] == pytest.approx(sp8.breakdown["optimizer"] / 2, rel=0.01)
    assert sp8_dp2.breakdown["parameters"] < sp8.breakdown["parameters"]
    assert sp8_dp2.breakdown["activations"] == sp8.breakdown["activations"]
