"""The TrainingPipeline contract: what is accepted, and the one-line errors for what is not."""

import pytest
import yaml

from zhinao_k8s.api.load import SpecError, load_pipeline, parse_pipeline
from zhinao_k8s.examples import example_text

BASE = {
    "apiVersion": "zhinao.ai/v1alpha1",
    "kind": "TrainingPipeline",
    "metadata": {"name": "p"},
    "spec": {
        "stages": [
            {"name": "tok", "kind": "tokenizer", "inputs": {"corpus": "file://data/corpus"}},
            {"name": "pt", "kind": "pretrain", "inputs": {"tokenizer": "stage://tok"}, "params": {}},
        ]
    },
}


def with_changes(path: str, value) -> str:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return yaml.safe_dump(doc)


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as exc:
        parse_pipeline(text)
    return exc.value.problems


def test_embedded_demo_spec_is_valid_and_resolves_stage_references():
    pipeline = parse_pipeline(example_text("demo"))
    pretrain = pipeline.stage("pretrain")
    assert pipeline.resolve_inputs(pretrain)["tokenizer"] == pipeline.output_of(pipeline.stage("tokenizer"))
    assert pretrain.params.adam_eps == 1e-8 and pretrain.params.min_lr_ratio == 0.1


def test_defaults_follow_the_report():
    p = parse_pipeline(yaml.safe_dump(BASE)).stage("pt").params
    assert (p.adam_beta1, p.adam_beta2, p.adam_eps, p.weight_decay, p.grad_clip, p.min_lr_ratio) == (
        0.9,
        0.95,
        1e-8,
        0.1,
        1.0,
        0.1,
    )


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec.stages.1.replicas", 0, "spec.stages[1].replicas: must be >= 1"),
        ("spec.stages.0.nprocPerNode", 0, "spec.stages[0].nprocPerNode: must be >= 1"),
        ("spec.stages.1.params.lr", -1, "spec.stages[1].params.lr: must be > 0"),
        ("spec.stages.1.params.modelSize", "3b", "spec.stages[1].params.modelSize: input should be"),
        ("spec.stages.1.params.learningRate", 1, "spec.stages[1].params.learningRate: unknown field"),
        ("spec.stages.0.kind", "sft2", "spec.stages[0]: unknown kind 'sft2'"),
        ("spec.bogus", 1, "spec.bogus: unknown field"),
        ("metadata.name", "Has_Caps", "metadata.name: must be a DNS-1035 label"),
        (
            "spec.stages.0.resources",
            {"cpu": "lots"},
            "spec.stages[0].resources.cpu: 'lots' is not a Kubernetes quantity",
        ),
        ("spec.storage", {"uri": "s3://bucket/x"}, "spec.storage: endpoint is required when uri is s3://"),
        ("spec.storage", {"uri": "gs://bucket"}, "spec.storage.uri: 'gs://bucket' must start with s3:// or file://"),
        (
            "spec.stages.1.inputs",
            {"tokenizer": "stage://later"},
            "spec.stages[1].inputs.tokenizer: 'stage://later' is not an earlier stage",
        ),
        ("spec.stages.1.params.warmupSteps", 500, "warmupSteps (500) must be < maxSteps (200)"),
    ],
)
def test_invalid_specs_name_the_field_and_the_reason(path, value, expected):
    lines = problems(with_changes(path, value))
    assert any(line.startswith(expected) or expected in line for line in lines), lines


def test_every_problem_is_reported_not_just_the_first():
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["spec"]["stages"][0]["replicas"] = 0
    doc["spec"]["stages"][1]["params"] = {"lr": 0, "zeroStage": 7}
    lines = problems(yaml.safe_dump(doc))
    assert len(lines) == 3, lines


def test_unreadable_inputs_are_spec_errors(tmp_path):
    assert problems("a: [1, 2")[0].startswith("line ")
    assert "mapping" in problems("- 1\n- 2\n")[0]
    with pytest.raises(SpecError, match="cannot read file"):
        load_pipeline(tmp_path / "missing.yaml")


def test_credentials_can_only_be_referenced():
    text = with_changes(
        "spec.storage",
        {"uri": "s3://b/x", "endpoint": "http://m:9000", "credentials": {"accessKey": "AKIA", "secretKey": "s"}},
    )
    assert any("unknown field" in line for line in problems(text))
