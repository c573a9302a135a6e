"""manifests/operator/: the operator install bundle for `kubectl apply -f`, generated from the
operator chart by hack/generate.py (`helm template`, default values). It must match the generator,
hold only valid objects, and grant exactly what the chart grants."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from schemas import validate_k8s  # tests/ is on sys.path (rootdir conftest)
from scripts import load_script

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "manifests" / "operator"


generate = load_script("hack/generate.py")


def bundle_objects() -> list[dict]:
    """Every object, in the order `kubectl apply -f manifests/operator/` applies them (file name order)."""
    return [d for f in sorted(BUNDLE.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def by_kind() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in bundle_objects():
        out.setdefault(o["kind"], []).append(o)
    return out


@pytest.fixture(scope="module")
def regenerated() -> dict[str, str]:
    if not generate.HELM.exists():
        pytest.fail(f"{generate.HELM} is missing: run `make tools` (the bundle is rendered from the chart)")
    return generate.operator_bundle()


def test_bundle_matches_the_generator(regenerated: dict[str, str]) -> None:
    problems = generate.check(files=regenerated)
    assert not problems, "run `make generate`:\n" + "\n".join(problems)
    assert {p.relative_to(REPO).as_posix() for p in BUNDLE.glob("*.yaml")} == set(regenerated)


def test_every_object_is_a_valid_kubernetes_object() -> None:
    objs = bundle_objects()
    assert len(objs) == 6
    for obj in objs:
        validate_k8s(obj)


def test_namespace_comes_first_and_holds_everything_namespaced() -> None:
    objs = bundle_objects()
    assert [o["kind"] for o in objs] == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
    ]
    ns = objs[0]["metadata"]["name"]
    assert ns == "zhinao-system"
    assert objs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for o in objs[1:]:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == ns, o["kind"]


def test_nothing_claims_to_be_managed_by_helm() -> None:
    text = "".join(f.read_text() for f in sorted(BUNDLE.glob("*.yaml")))
    assert "helm.sh/" not in text and "managed-by: Helm" not in text
    assert "kind: Pod\n" not in text  # no `helm test` pod


def test_the_pieces_fit_together() -> None:
    kinds = by_kind()
    (sa,) = kinds["ServiceAccount"]
    (role,) = kinds["ClusterRole"]
    (binding,) = kinds["ClusterRoleBinding"]
    (deploy,) = kinds["Deployment"]
    (svc,) = kinds["Service"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "zhinao-system"}
    ]
    pod = deploy["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["zhinao-k8s", "operator", "run"]
    assert {p["name"] for p in container["ports"]} == {p["targetPort"] for p in svc["spec"]["ports"]}


def test_rbac_is_the_charts_least_privilege_set() -> None:
    (role,) = by_kind()["ClusterRole"]
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


def test_operator_pod_meets_the_restricted_pod_security_standard() -> None:
    (deploy,) = by_kind()["Deployment"]
    spec = deploy["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["readOnlyRootFilesystem"] is True
        assert {"cpu", "memory"} <= c["resources"]["limits"].keys()
    assert all(set(v) <= {"name", "emptyDir", "configMap", "secret", "projected"} for v in spec.get("volumes", []))


def test_the_crd_it_refers_to_is_the_generated_one() -> None:
    for f in BUNDLE.glob("*.yaml"):
        assert "kubectl apply -f manifests/crds/ -f manifests/operator/" in f.read_text()
    crd = yaml.safe_load((REPO / "manifests" / "crds" / generate.CRD_FILE).read_text())
    assert crd["spec"]["names"]["kind"] == "TrainingPipeline"
    assert "CustomResourceDefinition" not in by_kind()  # referenced, not copied: one CRD file to keep current
