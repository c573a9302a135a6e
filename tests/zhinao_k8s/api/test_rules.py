"""The name, quantity and URI rules of api/rules.py, at their boundaries."""

import pytest

from zhinao_k8s.api import rules
from zhinao_k8s.api.v1alpha1 import TrainingPipeline


@pytest.mark.parametrize(
    ("replicas", "longest"),
    [(1, "p-s-master-0"), (2, "p-s-master-0"), (11, "p-s-master-0"), (12, "p-s-worker-10"), (102, "p-s-worker-100")],
)
def test_longest_replica_name(replicas: int, longest: str) -> None:
    assert rules.longest_replica_name(rules.job_name("p", "s"), replicas) == longest


def test_replica_names_fit_63_characters_exactly() -> None:
    # 40 + 1 + 13 + len("-master-0") = 63
    assert rules.replica_name_problem("a" * 40, "s" * 13, 1) is None
    problem = rules.replica_name_problem("a" * 40, "s" * 14, 1)
    assert problem and "64 characters" in problem and "-master-0" in problem
    assert rules.replica_name_problem("a" * 40, "s" * 13, 12)  # -worker-10 is one longer


def doc(name: str, stage: str = "tok", replicas: int = 1) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "stages": [{"name": stage, "kind": "tokenizer", "replicas": replicas, "inputs": {"corpus": "file://c"}}]
        },
    }


@pytest.mark.parametrize("name", ["7b-run", "-a", "a-", "A", "a_b", ""])
def test_pipeline_names_are_dns_1035_labels(name: str) -> None:
    with pytest.raises(ValueError, match="metadata.name"):
        TrainingPipeline.model_validate(doc(name))


def test_the_model_applies_the_derived_name_rule() -> None:
    TrainingPipeline.model_validate(doc("a" * 40, "s" * 13))
    with pytest.raises(ValueError, match="Service named"):
        TrainingPipeline.model_validate(doc("a" * 40, "s" * 13, replicas=12))


@pytest.mark.parametrize("value", ["1", "500m", "0.5", ".5", "16Gi", "1e3", "2E", "128974848"])
def test_good_quantities(value: str) -> None:
    assert rules.quantity_problem(value) is None


@pytest.mark.parametrize("value", ["-4", "...", "", "8GB", "1.2.3", "+1", "0", "0m", "4 ", "1Gib"])
def test_bad_quantities(value: str) -> None:
    assert rules.quantity_problem(value)


@pytest.mark.parametrize(
    "uri",
    ["s3://zhinao", "s3://zhinao/runs/a", "s3://my.bucket-1/x/", "file://./runs", "file://runs/x", "file:///abs/path"],
)
def test_good_uris(uri: str) -> None:
    assert rules.uri_problem(uri) is None


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("s3://k:SECRET@b/x", "credentials"),
        ("file://u@host/x", "credentials"),
        ("s3://bucket/a/../b", "'..'"),
        ("file://../x", "'..'"),
        ("file:///", "empty path"),
        ("file://", "empty path"),
        ("s3://Bucket/x", "bucket name"),
        ("s3://b/x", "3 to 63"),
        ("s3://" + "b" * 64, "3 to 63"),
        ("s3://10.0.0.1/x", "IP address"),
        ("s3://a..b/x", "bucket name"),
        ("s3://a.-b/x", "bucket name"),
        ("bucket/x", "must start with"),
        ("stage://x", "must start with"),
        ("s3://bucket/x?versionId=1", "'?' or '#'"),
        ("s3://bucket/a b", "whitespace"),
    ],
)
def test_bad_uris(uri: str, reason: str) -> None:
    problem = rules.uri_problem(uri)
    assert problem and reason in problem
    assert "SECRET" not in problem


def test_stage_uris_only_where_allowed() -> None:
    assert rules.uri_problem("stage://tok", ("s3", "file", "stage")) is None
    assert "must name a stage" in rules.uri_problem("stage://Tok", ("s3", "file", "stage"))


@pytest.mark.parametrize("endpoint", ["http://minio:9000", "https://s3.eu-west-1.amazonaws.com", "http://10.0.0.1"])
def test_good_endpoints(endpoint: str) -> None:
    assert rules.endpoint_problem(endpoint) is None


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("http://KEY:SECRET@minio:9000", "credentials"),
        ("minio:9000", "http://host"),
        ("ftp://minio", "http://host"),
        ("http://", "http://host"),
        ("http://minio:port", "not a URL"),
        ("http://minio/?token=SECRET", "query"),
    ],
)
def test_bad_endpoints(endpoint: str, reason: str) -> None:
    problem = rules.endpoint_problem(endpoint)
    assert problem and reason in problem and "SECRET" not in problem


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("s3://b/x", "s3://b/x/", True),
        ("s3://b/x", "s3://b/x/y", True),
        ("s3://b/x", "s3://b/xy", False),
        ("file://./runs/a", "file://runs/a", True),
        ("file://runs/a", "s3://runs/a", False),
    ],
)
def test_overlaps(a: str, b: str, overlap: bool) -> None:
    assert rules.overlaps(a, b) is overlap and rules.overlaps(b, a) is overlap


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("team", "a", True),
        ("app.kubernetes.io/name", "zhinao", True),
        ("team", "", True),
        ("team", "a b", False),
        ("team", "x" * 64, False),
        ("Bad_Prefix/x", "v", False),
        ("k" * 64, "v", False),
        ("-k", "v", False),
    ],
)
def test_labels(key: str, value: str, ok: bool) -> None:
    assert (rules.label_problem(key, value) is None) is ok


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("ghcr.io/zhinao-k8s/trainer:0.1.0", True),
        ("localhost:5000/trainer", True),
        ("trainer@sha256:" + "a" * 64, True),
        ("Trainer:dev", False),
        ("trainer:", False),
        ("my image", False),
    ],
)
def test_image_references(image: str, ok: bool) -> None:
    import re

    assert bool(re.match(rules.IMAGE_REFERENCE, image)) is ok
