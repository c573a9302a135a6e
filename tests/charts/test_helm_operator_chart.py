"""charts/zhinao-operator with the real helm: lint, template every ci/ scenario, validate every
object against the Kubernetes 1.35 schemas, and hold every pod to the security policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from helm_render import CHARTS, ci_values, helm, pod_policy_problems, pod_specs, render, validate_object

from zhinao_k8s.api.crd import ABLATION_PLURAL, PLURAL
from zhinao_k8s.api.v1alpha1 import API_VERSION, GROUP
from zhinao_k8s.controller.plan_pipeline import owner_reference

CHART = "zhinao-operator"
SCENARIOS = ci_values(CHART)


def by_kind(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def test_there_are_several_scenarios() -> None:
    assert {p.name for p in SCENARIOS} >= {"default-values.yaml", "monitoring-values.yaml", "namespaced-values.yaml"}


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda p: p.name if p else "no-values")
def test_lint_strict(values: Path | None) -> None:
    helm("lint", "--strict", str(CHARTS / CHART), *(["-f", str(values)] if values else []))


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_every_object_is_valid_and_every_pod_follows_the_policy(values: Path) -> None:
    objs = render(CHART, values)
    assert objs
    problems = []
    for obj in objs:
        validate_object(obj)
        for where, spec in pod_specs(obj):
            problems += pod_policy_problems(where, spec)
    assert not problems, "\n".join(problems)


def test_default_install() -> None:
    kinds = by_kind(render(CHART))
    assert set(kinds) == {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "Pod",
    }
    assert sorted(c["metadata"]["name"] for c in kinds["CustomResourceDefinition"]) == [
        "ablations.zhinao.ai",
        "trainingpipelines.zhinao.ai",
    ]
    (deploy,) = kinds["Deployment"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["zhinao-k8s", "operator", "run"]
    assert container["args"] == ["--metrics-port=8000", "--health-port=8080"]
    assert container["image"] == "ghcr.io/zhinao-k8s/operator:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    (test_pod,) = kinds["Pod"]
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert (
        test_pod["spec"]["containers"][0]["command"][-1] == "http://rel-zhinao-operator.zhinao-system.svc:8080/healthz"
    )


def test_rbac_is_least_privilege() -> None:
    (role,) = by_kind(render(CHART))["ClusterRole"]
    granted = {
        (g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert granted == {
        ("zhinao.ai", "trainingpipelines"): {"get", "list", "watch", "create", "patch"},  # create: an Ablation's runs
        ("zhinao.ai", "trainingpipelines/status"): {"get", "patch"},
        ("zhinao.ai", "ablations"): {"get", "list", "watch", "patch"},
        ("zhinao.ai", "ablations/status"): {"get", "patch"},
        ("zhinao.ai", "trainingpipelines/finalizers"): {"update"},  # blockOwnerDeletion on children
        ("zhinao.ai", "ablations/finalizers"): {"update"},
        ("kubeflow.org", "pytorchjobs"): {"get", "list", "watch", "create", "patch", "delete"},
        ("batch", "jobs"): {"list", "watch", "create", "delete"},  # GPU stages' memory plans
        ("", "pods"): {"list"},  # a plan's verdict: its pod's termination message
        ("", "configmaps"): {"create", "patch"},  # each stage's spec, mounted into its pods
        ("", "events"): {"create", "patch"},
    }
    assert not any("*" in v for verbs in granted.values() for v in verbs)


def _grants(role: dict) -> set[tuple[str, str, str]]:
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


@pytest.mark.parametrize(
    "values", [None, CHARTS / CHART / "ci" / "namespaced-values.yaml"], ids=["cluster", "namespaced"]
)
def test_owners_that_block_deletion_grant_update_on_their_finalizers(values: Path | None) -> None:
    """Every owner reference the operator writes sets blockOwnerDeletion; with the
    OwnerReferencesPermissionEnforcement admission plugin that needs `update` on <owner>/finalizers,
    or creating the child is refused."""
    owners = {"TrainingPipeline": PLURAL, "Ablation": ABLATION_PLURAL}  # every kind that owns children
    kinds = by_kind(render(CHART, values))
    for kind, plural in owners.items():
        ref = owner_reference({"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": "x", "uid": "u"}})
        assert ref["blockOwnerDeletion"] is True
        for role in kinds.get("ClusterRole", []) + kinds.get("Role", []):
            assert (GROUP, f"{plural}/finalizers", "update") in _grants(role), role["metadata"]


def test_namespaced_install_has_no_cluster_rights() -> None:
    kinds = by_kind(render(CHART, CHARTS / CHART / "ci" / "namespaced-values.yaml"))
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    assert sorted(r["metadata"]["namespace"] for r in kinds["Role"]) == ["team-a", "team-b"]
    assert sorted(b["subjects"][0]["namespace"] for b in kinds["RoleBinding"]) == ["zhinao-system", "zhinao-system"]
    args = kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "PodMonitor" in kinds and "Pod" not in kinds  # helm test pod switched off


def test_monitoring_and_digest() -> None:
    kinds = by_kind(render(CHART, CHARTS / CHART / "ci" / "monitoring-values.yaml"))
    (sm,) = kinds["ServiceMonitor"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@sha256:" + "0" * 64)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true"], "not both"),
        (["--set", "replicas=2"], "additional properties"),
        (["--set", "logLevel=LOUD"], "logLevel"),
        (["--set", "resources.limits=null"], "limits"),
    ],
)
def test_bad_values_are_refused(args: list[str], message: str) -> None:
    out = helm("template", "rel", str(CHARTS / CHART), *args, check=False)
    assert out.returncode != 0
    assert message.lower() in out.stderr.lower(), out.stderr


def test_notes_show_how_to_submit_the_first_pipeline() -> None:
    out = helm("install", "rel", str(CHARTS / CHART), "--dry-run=client", "-n", "ops")
    assert "zhinao-k8s submit manifests/examples/pipeline.yaml" in out.stdout
    assert "helm test rel -n ops" in out.stdout


@pytest.mark.parametrize("name", ["zhinao.ai_trainingpipelines.yaml", "zhinao.ai_ablations.yaml"])
def test_chart_crd_is_the_generated_one(name: str) -> None:
    generated = (CHARTS.parent / "manifests" / "crds" / name).read_text()
    assert (CHARTS / CHART / "crds" / name).read_text() == generated
