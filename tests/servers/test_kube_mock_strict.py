"""The API emulator enforces what a real API server does where the operator depends on it
(servers/kube_strict.py). Each test fails against kmock's stock, lenient emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from servers.kube_mock import KubeMock

NS = "team-a"
TP = ("zhinao.ai", "v1alpha1", NS, "trainingpipelines")
JOB = ("kubeflow.org", "v1", NS, "pytorchjobs")


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeMock]:
    mock = KubeMock(tmp_path).start()
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture
def api(kube: KubeMock):
    return kube.cluster.custom


def pipeline(name: str = "demo", **spec) -> dict:
    return {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": name},
        "spec": {"stages": [{"name": "tok", "kind": "tokenizer"}], **spec},
    }


def job(name: str, owner: dict | None = None, finalizers: list[str] | None = None) -> dict:
    template = {"spec": {"containers": [{"name": "pytorch", "image": "trainer:1"}]}}
    meta: dict = {"name": name}
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    if finalizers:
        meta["finalizers"] = finalizers
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": meta,
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": template}}},
    }


def get(api, coords, name: str) -> dict | None:
    try:
        return api.get_namespaced_custom_object(*coords, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


@pytest.mark.parametrize(
    "coords, body, where",
    [
        (TP, pipeline(stages=[]), "spec.stages"),
        (TP, pipeline(retryPolicy={"maxRetries": "two"}), "spec.retryPolicy.maxRetries"),
        (JOB, {**job("j"), "spec": {"runPolicy": {"backoffLimit": "five"}, "pytorchReplicaSpecs": {}}}, "backoffLimit"),
    ],
    ids=["our CRD", "our CRD, a type", "Kubeflow's CRD"],
)
def test_objects_that_break_the_real_crd_schema_are_refused(api, coords, body, where: str) -> None:
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object(*coords, body)
    assert err.value.status == 422 and where in err.value.body


def test_a_batch_job_that_breaks_the_kubernetes_schema_is_refused(kube: KubeMock) -> None:
    """The operator's memory plan Jobs are checked against Kubernetes' own Job schema (strict)."""
    batch = kube.cluster.batch
    template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "plan", "image": "trainer:1"}]}}
    body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "p"}, "spec": {"template": template}}
    bad = {**body, "spec": {"template": template, "backoffLimit": "none"}}
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job(NS, bad)
    assert err.value.status == 422 and "spec.backoffLimit" in err.value.body
    batch.create_namespaced_job(NS, body)
    with pytest.raises(ApiException) as err:
        batch.patch_namespaced_job_status("p", NS, {"status": {"conditions": [{"type": "Complete"}]}})
    assert err.value.status == 422 and "status" in err.value.body.lower()


def test_a_patch_against_a_stale_resource_version_conflicts(api) -> None:
    created = api.create_namespaced_custom_object(*TP, pipeline())
    stale = created["metadata"]["resourceVersion"]
    api.patch_namespaced_custom_object(*TP, "demo", {"metadata": {"labels": {"a": "1"}}})
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object(*TP, "demo", {"metadata": {"resourceVersion": stale, "labels": {"a": "2"}}})
    assert err.value.status == 409
    assert get(api, TP, "demo")["metadata"]["labels"] == {"a": "1"}


def test_generation_counts_spec_changes_only(api) -> None:
    assert api.create_namespaced_custom_object(*TP, pipeline())["metadata"]["generation"] == 1
    api.patch_namespaced_custom_object(*TP, "demo", {"metadata": {"annotations": {"x": "y"}}})
    api.patch_namespaced_custom_object_status(*TP, "demo", {"status": {"phase": "Running"}})
    assert get(api, TP, "demo")["metadata"]["generation"] == 1
    api.patch_namespaced_custom_object(*TP, "demo", {"spec": {"suspend": True}})
    assert get(api, TP, "demo")["metadata"]["generation"] == 2
    api.patch_namespaced_custom_object(*TP, "demo", {"spec": {"suspend": True}})  # no change
    assert get(api, TP, "demo")["metadata"]["generation"] == 2


def test_status_is_written_only_through_the_status_subresource(api) -> None:
    created = api.create_namespaced_custom_object(*TP, {**pipeline(), "status": {"phase": "Succeeded"}})
    assert "status" not in created
    api.patch_namespaced_custom_object(*TP, "demo", {"status": {"phase": "Failed"}, "metadata": {"labels": {"a": "1"}}})
    assert "status" not in get(api, TP, "demo") and get(api, TP, "demo")["metadata"]["labels"] == {"a": "1"}
    api.patch_namespaced_custom_object_status(*TP, "demo", {"status": {"phase": "Running"}, "spec": {"suspend": True}})
    obj = get(api, TP, "demo")
    assert obj["status"] == {"phase": "Running"} and "suspend" not in obj["spec"]


def test_background_deletion_collects_the_dependents(api) -> None:
    owner = api.create_namespaced_custom_object(*TP, pipeline())
    api.create_namespaced_custom_object(*JOB, job("demo-tok", owner))
    api.delete_namespaced_custom_object(*TP, "demo", propagation_policy="Background")
    assert get(api, TP, "demo") is None and get(api, JOB, "demo-tok") is None


def test_foreground_deletion_keeps_the_owner_until_its_dependents_are_gone(api) -> None:
    owner = api.create_namespaced_custom_object(*TP, pipeline())
    # The dependent has a finalizer of its own (the training operator's, say): it lingers.
    api.create_namespaced_custom_object(*JOB, job("demo-tok", owner, finalizers=["example.com/hold"]))
    api.delete_namespaced_custom_object(*TP, "demo", propagation_policy="Foreground")
    held = get(api, TP, "demo")
    assert held["metadata"]["deletionTimestamp"] and "foregroundDeletion" in held["metadata"]["finalizers"]
    assert get(api, JOB, "demo-tok")["metadata"]["deletionTimestamp"]
    api.patch_namespaced_custom_object(*JOB, "demo-tok", {"metadata": {"finalizers": []}})
    assert get(api, JOB, "demo-tok") is None and get(api, TP, "demo") is None


def test_orphan_deletion_leaves_the_dependents(api) -> None:
    owner = api.create_namespaced_custom_object(*TP, pipeline())
    api.create_namespaced_custom_object(*JOB, job("demo-tok", owner))
    api.delete_namespaced_custom_object(*TP, "demo", propagation_policy="Orphan")
    assert get(api, TP, "demo") is None
    assert not get(api, JOB, "demo-tok")["metadata"].get("ownerReferences")
