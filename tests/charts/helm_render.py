"""Render charts with the real helm binary and check what comes out.

A plain module (unique name) shared by the chart tests: `from helm_render import ...`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from schemas import KUBERNETES_VERSION, crd_schema, validate_k8s, validate_pytorchjob  # tests/ on sys.path

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / "bin" / "helm"
CHARTS = REPO / "charts"
# Kinds that kubernetes-validate does not know (CRDs); each is checked another way or listed here.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "TrainingPipeline", "PyTorchJob"}
SECRET_NAME = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run `make tools`")
    env = {
        "HOME": str(REPO / "bin"),
        "PATH": "/usr/bin:/bin",
        "HELM_CACHE_HOME": "/tmp/helm-cache",
        "HELM_CONFIG_HOME": "/tmp/helm-config",
        "HELM_DATA_HOME": "/tmp/helm-data",
    }
    out = subprocess.run([str(HELM), *args], capture_output=True, text=True, env=env, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def render(chart: str, values: Path | None = None, *extra: str, namespace: str = "zhinao-system") -> list[dict]:
    args = [
        "template",
        "rel",
        str(CHARTS / chart),
        "--namespace",
        namespace,
        "--include-crds",
        "--kube-version",
        KUBERNETES_VERSION,
        *extra,
    ]
    if values is not None:
        args += ["-f", str(values)]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def ci_values(chart: str) -> list[Path]:
    return sorted((CHARTS / chart / "ci").glob("*-values.yaml"))


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod an object would run."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "Pod":
        return [(f"Pod/{name}", obj["spec"])]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [(f"{kind}/{name}", obj["spec"]["template"]["spec"])]
    if kind == "PyTorchJob":
        return [
            (f"PyTorchJob/{name}/{role}", r["template"]["spec"])
            for role, r in obj["spec"]["pytorchReplicaSpecs"].items()
        ]
    return []


def validate_object(obj: dict, pipeline_schema: dict | None = None) -> None:
    kind = obj["kind"]
    if kind == "PyTorchJob":
        validate_pytorchjob(obj)
    elif kind == "TrainingPipeline":
        import jsonschema

        assert pipeline_schema is not None, "pass the TrainingPipeline CRD schema"
        jsonschema.Draft4Validator(pipeline_schema).validate(obj)
    elif kind in CUSTOM_KINDS:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1", obj["apiVersion"]
    else:
        validate_k8s(obj)


def pod_policy_problems(where: str, spec: dict) -> list[str]:
    """Non-root, no privilege escalation, all capabilities dropped, read-only root filesystem,
    requests and limits, and no credential in a plain env value."""
    problems = []
    pod_sc = spec.get("securityContext") or {}
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        at = f"{where}/{c['name']}"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{at}: runAsNonRoot is not set")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{at}: runs as uid 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{at}: privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{at}: capabilities are not all dropped")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: root filesystem is writable")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part) or {}):
                problems.append(f"{at}: resources.{part} needs cpu and memory")
        for env in c.get("env", []):
            if any(word in env["name"].upper() for word in SECRET_NAME) and "value" in env:
                problems.append(f"{at}: {env['name']} is set inline; use valueFrom.secretKeyRef")
    return problems


__all__ = [
    "helm",
    "render",
    "ci_values",
    "pod_specs",
    "validate_object",
    "pod_policy_problems",
    "crd_schema",
    "REPO",
    "CHARTS",
]
