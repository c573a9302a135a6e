"""What a real API server enforces and kmock's emulator does not, where the operator depends on it.

Used by kube_mock.Emulator on every request:
- every created or changed object of a known CRD is validated against that CRD's real schema
  (ours in manifests/crds/, Kubeflow's PyTorchJob), and every batch/v1 Job and Pod against the
  Kubernetes OpenAPI schema (kubernetes-validate, strict): 422 Invalid;
- a write that names a stale `metadata.resourceVersion` is refused: 409 Conflict;
- `metadata.generation` counts changes of `spec` only;
- with a status subresource, the main resource ignores `status` and `/status` writes only `status`;
- the garbage collector: an object whose owners are all gone is deleted; `propagationPolicy`
  Foreground keeps the owner (deletionTimestamp, finalizer `foregroundDeletion`) until its
  dependents are gone, Background deletes it first, Orphan strips the dependents' owner references.

Not emulated: pruning of unknown fields (they are kept), CEL rules, admission webhooks.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import jsonschema
import kmock
import yaml
from schemas import crd_json_schema, crd_path, validate_k8s

REPO = Path(__file__).resolve().parents[2]
FOREGROUND = "foregroundDeletion"


def invalid(message: str) -> kmock.KubernetesError:
    """kmock answers a KubernetesError with a Status object of its code, reason and message."""
    return kmock.KubernetesError(status=422, reason="Invalid", message=message)


def conflict(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=409, reason="Conflict", message=message)


@cache
def crd_schemas() -> dict[tuple[str, str, str], jsonschema.Draft4Validator]:
    """(group, version, plural) -> a validator of every CRD the tests know (OpenAPI 3.0 schemas
    are JSON Schema draft 4: boolean exclusiveMaximum)."""
    paths = [*sorted((REPO / "manifests" / "crds").glob("*.yaml")), crd_path("kubeflow.org_pytorchjobs.yaml")]
    out = {}
    for path in paths:
        crd = yaml.safe_load(Path(path).read_text())
        for version in crd["spec"]["versions"]:
            key = (crd["spec"]["group"], version["name"], crd["spec"]["names"]["plural"])
            out[key] = jsonschema.Draft4Validator(crd_json_schema(str(path), version["name"]))
    return out


BUILTIN = {("batch", "v1", "jobs"), ("", "v1", "pods")}
"""Built-in resources the operator or its tests create, validated with Kubernetes' own schema."""


def validate(resource, obj: dict) -> None:
    key = (resource.group or "", resource.version, resource.plural)
    validator = crd_schemas().get(key)
    if validator is None and key not in BUILTIN:
        return
    try:
        validator.validate(obj) if validator is not None else validate_k8s(obj)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "<object>"
        raise invalid(f"{resource.plural} is invalid: {where}: {exc.message}") from None


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch: dicts merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def check_write(resource, info: kmock.ResourceInfo | None, stored: dict, request: kmock.Request) -> None:
    """An UPDATE (patch) of `stored`: reshape `request.data` in place as the API server would."""
    data = request.data
    sent_version = (data.get("metadata") or {}).get("resourceVersion")
    if sent_version is not None and sent_version != (stored.get("metadata") or {}).get("resourceVersion"):
        raise conflict(
            f"Operation cannot be fulfilled on {resource.plural} {request.name!r}: the object has been "
            "modified; please apply your changes to the latest version and try again"
        )
    has_status = info is not None and "status" in (info.subresources or set())
    if has_status and request.subresource == "status":
        kept = {k: v for k, v in data.items() if k == "status"}
        data.clear()
        data.update(kept)
    elif has_status:
        data.pop("status", None)
    merged = merge_patch(stored, data)
    if merged.get("spec") != stored.get("spec"):
        generation = (stored.get("metadata") or {}).get("generation") or 1
        data.setdefault("metadata", {})["generation"] = generation + 1
    validate(resource, merge_patch(stored, data))


def propagation_policy(request: kmock.Request) -> str:
    body = request.data if isinstance(request.data, dict) else {}
    return request.params.get("propagationPolicy") or body.get("propagationPolicy") or "Background"


def owner_uids(obj: dict) -> set[str]:
    return {ref.get("uid") for ref in (obj.get("metadata") or {}).get("ownerReferences") or []}
