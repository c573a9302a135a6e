"""Validate objects against the real schemas: Kubernetes (kubernetes-validate) and the PyTorchJob CRD."""

from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_CRDS = REPO.parent / "shared" / "k8s" / "crds"
VENDORED_CRDS = REPO / "tests" / "crds"
KUBERNETES_VERSION = "1.35.0"


def crd_path(name: str) -> Path:
    """The CRD from ../shared (the issue's reference copy), else the vendored copy for a clean clone."""
    shared = SHARED_CRDS / name
    return shared if shared.exists() else VENDORED_CRDS / name


@lru_cache
def crd_schema(name: str = "kubeflow.org_pytorchjobs.yaml") -> dict:
    crd = yaml.safe_load(crd_path(name).read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def crd_json_schema(name: str, version: str | None = None) -> dict:
    """A CRD's openAPIV3Schema as JSON Schema: OpenAPI `nullable` becomes a null type, and the
    `x-kubernetes-*` extensions (which jsonschema does not know) are dropped."""

    def convert(node):
        if isinstance(node, list):
            return [convert(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: convert(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
        return out

    crd = yaml.safe_load(crd_path(name).read_text())
    spec = next(v for v in crd["spec"]["versions"] if version is None or v["name"] == version)
    return convert(spec["schema"]["openAPIV3Schema"])


def validate_pytorchjob(job: dict) -> None:
    jsonschema.validate(job, crd_schema())
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        validate_pod_template(replica["template"])


def validate_pod_template(template: dict) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x", **template.get("metadata", {})},
        "spec": template["spec"],
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def validate_k8s(obj: dict) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
