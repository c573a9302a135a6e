"""The TrainingPipeline and Ablation CustomResourceDefinitions, generated from the spec and status models.

Pure: pydantic JSON Schema in, a structural openAPIV3Schema out (`make generate` writes it to
manifests/crds/ and charts/zhinao-operator/crds/; a test fails when the checked-in copy drifts).

What "structural" (apiextensions.k8s.io/v1) asks of the pydantic schema:
- no `$ref`: every definition is inlined;
- no `anyOf` with `null`: `X | None` becomes X with `nullable: true`;
- every node has a `type`; no `title`, no `const`, no `additionalProperties: false` next to
  `properties` (the API server prunes unknown fields instead of rejecting them);
- draft 2020 numeric `exclusiveMinimum: 0` becomes OpenAPI 3.0 `minimum: 0, exclusiveMinimum: true`;
- a discriminated union (`stages[]`, one schema per `kind`) becomes one object with the union of
  the branches' fields and `kind` as an enum; fields the branches define differently keep their
  shape where they can and are otherwise left to the operator, which validates every spec with the
  pydantic models and reports a bad one in `status`.

Defaults are not copied into the CRD: the models apply them, so the API server stores exactly what
the user wrote and `kubectl get -o yaml` is the user's document. They are named in descriptions.
"""

import copy
import json
from dataclasses import dataclass
from typing import Any

from zhinao_k8s.api import cel, rules
from zhinao_k8s.api.ablation import KIND as ABLATION_KIND
from zhinao_k8s.api.ablation import MAX_RUN_NAME, AblationSpec
from zhinao_k8s.api.status import AblationStatus, PipelineStatus
from zhinao_k8s.api.v1alpha1 import API_VERSION, GROUP, KIND, VERSION, PipelineSpec

PLURAL = "trainingpipelines"
SINGULAR = "trainingpipeline"
SHORT_NAMES = ["tp", "tpipe"]
MAX_NAME_LENGTH = rules.MAX_PIPELINE_NAME

PRINTER_COLUMNS = [
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "Pending, Running, Suspended, Succeeded or Failed",
    },
    {
        "name": "Stage",
        "type": "string",
        "jsonPath": ".status.currentStage",
        "description": "The first stage that has not Succeeded",
    },
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress", "description": "Succeeded stages / stages"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

ABLATION_PLURAL = "ablations"
# The shortest run name is `<ablation>-r-s0`; the operator checks the real recipe names.
MAX_ABLATION_NAME = MAX_RUN_NAME - len("-r-s0")
ABLATION_PRINTER_COLUMNS = [
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "Pending, Preparing, Training, Evaluating, Succeeded or Failed",
    },
    {"name": "Runs", "type": "string", "jsonPath": ".status.progress", "description": "Succeeded runs / runs"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


@dataclass(frozen=True)
class Resource:
    """What tells one zhinao.ai CRD from another; the schema rules are shared."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: list[dict]
    spec_model: type
    status_model: type
    description: str
    spec_description: str
    max_name: int
    max_name_why: str
    """The end of the CEL rule's message: why names are that short."""

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


TRAINING_PIPELINE = Resource(
    kind=KIND,
    plural=PLURAL,
    singular=SINGULAR,
    short_names=tuple(SHORT_NAMES),
    printer_columns=PRINTER_COLUMNS,
    spec_model=PipelineSpec,
    status_model=PipelineStatus,
    description="A chain of training stages (tokenizer, pretrain, ...) run as PyTorchJobs, one after another.",
    spec_description="What to train: the stages, run in order, and how they run.",
    max_name=MAX_NAME_LENGTH,
    max_name_why="child PyTorchJobs are named <pipeline>-<stage>",
)
ABLATION = Resource(
    kind=ABLATION_KIND,
    plural=ABLATION_PLURAL,
    singular="ablation",
    short_names=("abl",),
    printer_columns=ABLATION_PRINTER_COLUMNS,
    spec_model=AblationSpec,
    status_model=AblationStatus,
    description="Data recipes compared on a small proxy model: recipes x seeds TrainingPipelines, evaluations, statistics.",
    spec_description="The recipes, the fixed base data, the proxy model, the seeds and the evaluations.",
    max_name=MAX_ABLATION_NAME,
    max_name_why=f"runs are TrainingPipelines named <ablation>-<recipe>-s<k>, at most {MAX_RUN_NAME} characters",
)

_DROP = {"title", "default", "discriminator", "examples"}


def _inline(node: Any, defs: dict) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return _inline({**target, **extra}, defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _describe_default(node: dict) -> None:
    if node.get("default") is not None and not isinstance(node["default"], (dict, list)):
        text = node.get("description", "").rstrip()
        shown = json.dumps(node["default"])
        node["description"] = (text + " " if text else "") + f"Default: {shown}."


def _strip_description(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_description(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip_description(v) for v in node]
    return node


def _merge(a: dict, b: dict) -> dict:
    """One schema accepting what either branch of a union accepts (as far as structure goes)."""
    if _strip_description(a) == _strip_description(b):
        return a
    if a.get("type") == b.get("type") == "string" and "enum" in a and "enum" in b:
        return {**a, "enum": a["enum"] + [v for v in b["enum"] if v not in a["enum"]]}
    if a.get("type") == b.get("type") == "object" and "properties" in a and "properties" in b:
        props = dict(a["properties"])
        for key, schema in b["properties"].items():
            props[key] = _merge(props[key], schema) if key in props else schema
        out = {**a, "properties": props}
        required = [k for k in a.get("required", []) if k in b.get("required", [])]
        out.pop("required", None)
        if required:
            out["required"] = required
        out["description"] = (
            a.get("description") or b.get("description") or ""
        ) + " Fields depend on the stage kind; the operator checks them and reports errors in status."
        out["description"] = out["description"].strip()
        return out
    if a.get("type") == b.get("type") and a.get("type") in ("integer", "number", "string", "boolean", "array"):
        # Same type, different constraints: keep only the constraints both branches share.
        shared = {k: v for k, v in a.items() if k != "description" and b.get(k) == v}
        return {**shared, "description": a.get("description") or b.get("description", "")}
    keep = a.get("description") or b.get("description")
    out = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if keep:
        out["description"] = keep
    return out


def structural(node: Any) -> Any:
    """A pydantic JSON Schema node (refs already inlined) -> a structural OpenAPI v3 schema node."""
    if isinstance(node, list):
        return [structural(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    _describe_default(node)
    for key in _DROP:
        node.pop(key, None)
    for union in ("anyOf", "oneOf"):
        if union in node:
            branches = [structural(b) for b in node.pop(union)]
            nullable = any(b.get("type") == "null" for b in branches)
            branches = [b for b in branches if b.get("type") != "null"]
            merged = branches[0]
            for other in branches[1:]:
                merged = _merge(merged, other)
            rest = {k: structural(v) for k, v in node.items()}
            node = {**merged, **rest}
            if nullable:
                node["nullable"] = True
            return node
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if "properties" in node:
        node.pop("additionalProperties", None)
        node["properties"] = {k: structural(v) for k, v in node["properties"].items()}
        node.setdefault("type", "object")
    elif node.get("type") == "object":
        extra = node.pop("additionalProperties", True)
        if extra is True or extra == {}:
            node["x-kubernetes-preserve-unknown-fields"] = True
        elif extra is not False:
            node["additionalProperties"] = structural(extra)
    if "items" in node:
        node["items"] = structural(node["items"])
    if "type" not in node and "x-kubernetes-preserve-unknown-fields" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True  # `Any`
    return node


def model_schema(model: type) -> dict:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(_inline(raw, raw.get("$defs", {})))


def openapi_schema(resource: Resource = TRAINING_PIPELINE) -> dict:
    spec = model_schema(resource.spec_model)
    spec["description"] = resource.spec_description
    if resource.kind == KIND:
        cel.add_stage_rules(spec)
    status = model_schema(resource.status_model)
    status["description"] = "Written by the operator; other fields (kopf's bookkeeping) are kept."
    status["x-kubernetes-preserve-unknown-fields"] = True
    return {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": cel.name_rules(resource.max_name, resource.max_name_why)
        + (cel.pipeline_rules() if resource.kind == KIND else []),
    }


def crd(resource: Resource = TRAINING_PIPELINE) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.crd_name,
            "labels": {"app.kubernetes.io/name": "zhinao-operator", "app.kubernetes.io/part-of": "zhinao-k8s"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": ["zhinao"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": copy.deepcopy(resource.printer_columns),
                    "schema": {"openAPIV3Schema": openapi_schema(resource)},
                }
            ],
        },
    }


__all__ = [
    "crd",
    "openapi_schema",
    "structural",
    "model_schema",
    "Resource",
    "TRAINING_PIPELINE",
    "ABLATION",
    "PLURAL",
    "ABLATION_PLURAL",
    "API_VERSION",
]
