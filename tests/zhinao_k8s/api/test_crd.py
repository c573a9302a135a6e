"""The generated CRD: structural, valid for the API server, in step with the models and on disk."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from schemas import validate_k8s, validate_pytorchjob  # tests/ is on sys.path (rootdir conftest)
from scripts import load_script

from zhinao_k8s.api.ablation import parse_ablation
from zhinao_k8s.api.crd import ABLATION, PRINTER_COLUMNS, TRAINING_PIPELINE, Resource, crd, structural
from zhinao_k8s.api.status import AblationStatus, PipelineStatus, StageStatus
from zhinao_k8s.api.v1alpha1 import TrainingPipeline
from zhinao_k8s.controller.plan_ablation import plan_ablation
from zhinao_k8s.examples import example_text

REPO = Path(__file__).resolve().parents[3]


generate = load_script("hack/generate.py")


def root_schema(resource: Resource = TRAINING_PIPELINE) -> dict:
    return crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


BOTH = pytest.mark.parametrize("resource", [TRAINING_PIPELINE, ABLATION], ids=lambda r: r.kind)


def as_jsonschema(node):
    """OpenAPI 3.0 (`nullable`, boolean exclusive bounds) -> JSON Schema draft 4 for `jsonschema`."""
    if isinstance(node, list):
        return [as_jsonschema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from walk(value, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from walk(node[key], f"{path}.{key}")


def test_checked_in_files_match_the_generator() -> None:
    problems = generate.check()
    assert not problems, "run `make generate`:\n" + "\n".join(problems)


@BOTH
def test_crd_is_a_valid_kubernetes_object(resource: Resource) -> None:
    validate_k8s(crd(resource))


@BOTH
def test_schema_is_structural(resource: Resource) -> None:
    for path, node in walk(root_schema(resource)):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title", "default"} & node.keys(), path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), f"{path}: {bound} must be a boolean in OpenAPI v3.0"


def test_status_subresource_and_printer_columns() -> None:
    version = crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Stage", "Progress", "Age"]
    assert version["additionalPrinterColumns"] == PRINTER_COLUMNS
    assert crd()["spec"]["names"]["kind"] == "TrainingPipeline"


def test_example_pipeline_validates_against_the_crd_schema() -> None:
    doc = yaml.safe_load((REPO / "manifests/examples/pipeline.yaml").read_text())
    jsonschema.Draft4Validator(as_jsonschema(root_schema())).validate(doc)
    TrainingPipeline.model_validate(doc)  # and the models agree


def test_full_spec_and_status_validate_against_the_crd_schema() -> None:
    """Every field the models can write (defaults filled in) is accepted by the CRD schema."""
    doc = generate.example_pipeline().model_dump(mode="json", by_alias=True)
    doc["status"] = PipelineStatus(
        phase="Running",
        current_stage="pretrain",
        progress="1/2",
        stages=[StageStatus(name="tokenizer", phase="Succeeded", attempt=1)],
    ).to_wire()
    doc["status"]["kopf"] = {"progress": {}}  # kopf's bookkeeping is preserved, not pruned
    jsonschema.Draft4Validator(as_jsonschema(root_schema())).validate(doc)


def test_ablation_crd_names_status_and_columns() -> None:
    doc = crd(ABLATION)
    assert doc["metadata"]["name"] == "ablations.zhinao.ai"
    assert doc["spec"]["names"]["kind"] == "Ablation" and doc["spec"]["names"]["shortNames"] == ["abl"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"]] == [
        ("Phase", ".status.phase"),
        ("Runs", ".status.progress"),
        ("Age", ".metadata.creationTimestamp"),
    ]


def test_full_ablation_and_its_status_validate_against_the_crd_schema() -> None:
    """The demo Ablation with every default written out, and a status the operator writes."""
    ablation = parse_ablation(example_text("ablation-demo"))
    doc = ablation.model_dump(mode="json", by_alias=True)
    doc["status"] = plan_ablation(ablation, {}, {}, AblationStatus(), now="2026-01-01T00:00:00Z").status.to_wire()
    doc["status"]["kopf"] = {"progress": {}}
    validator = jsonschema.Draft4Validator(as_jsonschema(root_schema(ABLATION)))
    validator.validate(doc)
    doc["spec"]["experimentalShare"] = 1.5
    with pytest.raises(jsonschema.ValidationError) as err:
        validator.validate(doc)
    assert err.value.validator == "maximum"


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"replicas": 0}, "minimum"),
        ({"kind": "no-such-kind"}, "enum"),
        ({"resources": {"gpu": "eight"}}, "type"),
    ],
)
def test_crd_schema_rejects_what_the_models_reject(bad: dict, where: str) -> None:
    doc = copy.deepcopy(generate.EXAMPLE_PIPELINE)
    doc["spec"]["stages"][1].update(bad)
    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.Draft4Validator(as_jsonschema(root_schema())).validate(doc)
    assert err.value.validator == where


def test_example_stages_validate_against_pytorchjob_crd_and_kubernetes_schemas() -> None:
    for stage in ("tokenizer", "pretrain"):
        configmap, job = yaml.safe_load_all((REPO / f"manifests/examples/{stage}.yaml").read_text())
        validate_k8s(configmap)
        validate_pytorchjob(job)


@pytest.mark.parametrize(
    "given, expected",
    [
        (
            {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None},
            {"type": "integer", "minimum": 1, "nullable": True},
        ),
        (
            {"type": "number", "exclusiveMinimum": 0, "default": 0.5, "title": "Lr"},
            {"type": "number", "minimum": 0, "exclusiveMinimum": True, "description": "Default: 0.5."},
        ),
        ({"const": "pretrain", "type": "string"}, {"type": "string", "enum": ["pretrain"]}),
        (
            {"type": "object", "additionalProperties": {"type": "string"}},
            {"type": "object", "additionalProperties": {"type": "string"}},
        ),
        (
            {"type": "object", "additionalProperties": True},
            {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        ),
        ({}, {"x-kubernetes-preserve-unknown-fields": True}),
        (
            {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"kind": {"type": "string", "enum": ["a"]}, "x": {"type": "integer"}},
                        "required": ["kind", "x"],
                    },
                    {
                        "type": "object",
                        "properties": {"kind": {"type": "string", "enum": ["b"]}, "x": {"type": "string"}},
                        "required": ["kind"],
                    },
                ]
            },
            {
                "type": "object",
                "properties": {
                    "kind": {"type": "string", "enum": ["a", "b"]},
                    "x": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
                "required": ["kind"],
                "description": "Fields depend on the stage kind; the operator checks them and reports errors in status.",
            },
        ),
    ],
)
def test_structural_conversion_table(given: dict, expected: dict) -> None:
    assert structural(given) == expected


def test_pure_modules_import_no_cluster_client() -> None:
    """Nor does the ablation's job entry point: the trainer image has no kubernetes client."""
    import subprocess
    import sys

    code = (
        "import sys, zhinao_k8s.controller.plan_pipeline, zhinao_k8s.controller.pipeline_status, zhinao_k8s.api.crd, zhinao_k8s.render.pytorchjob,"
        " zhinao_k8s.controller.plan_ablation, zhinao_k8s.render.ablation, zhinao_k8s.jobs.ablation_step;"
        "print(','.join(m for m in ('kopf', 'kubernetes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
