"""The CRD's CEL rules, evaluated by a real CEL implementation (cel-python) the way the API server
applies them: each refuses what the models refuse, and passes every valid pipeline."""

import copy
from pathlib import Path

import celpy
import pytest
import yaml

from zhinao_k8s.api.crd import ABLATION, crd
from zhinao_k8s.api.load import SpecError, validate_document
from zhinao_k8s.api.v1alpha1 import STAGE_KINDS, TrainingPipeline
from zhinao_k8s.examples import example_text

ROOT = Path(__file__).resolve().parents[3]
ENV = celpy.Environment()


def schema(resource=None) -> dict:
    return (crd(resource) if resource else crd())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def rules_with_paths(node: dict, path: tuple = ()) -> list[tuple[tuple, dict]]:
    """(path of `self`, rule) for every x-kubernetes-validations entry; '*' marks list items."""
    out = [(path, r) for r in node.get("x-kubernetes-validations", [])]
    for key, child in node.get("properties", {}).items():
        out += rules_with_paths(child, path + (key,))
    if "items" in node:
        out += rules_with_paths(node["items"], path + ("*",))
    return out


def selves(doc, path: tuple) -> list:
    nodes = [doc]
    for key in path:
        if key == "*":
            nodes = [item for n in nodes for item in n]
        else:
            nodes = [n[key] for n in nodes if isinstance(n, dict) and key in n]
    return nodes


def failures(doc: dict, resource=None) -> list[str]:
    """Messages of the rules `doc` breaks."""
    out = []
    for path, rule in rules_with_paths(schema(resource)):
        program = ENV.program(ENV.compile(rule["rule"]))
        for self_ in selves(doc, path):
            if not bool(program.evaluate({"self": celpy.json_to_cel(self_)})):
                out.append(rule["message"])
    return out


def test_every_rule_compiles_and_the_checked_in_crd_has_them() -> None:
    checked_in = yaml.safe_load((ROOT / "manifests/crds/zhinao.ai_trainingpipelines.yaml").read_text())
    assert checked_in["spec"] == crd()["spec"]
    found = rules_with_paths(schema())
    assert {p for p, _ in found} == {(), ("spec", "stages"), ("spec", "stages", "*")}
    assert len(found) >= 3 + 2 + len(STAGE_KINDS)
    for _, rule in found + rules_with_paths(schema(ABLATION)):
        ENV.compile(rule["rule"])


GOOD = [
    yaml.safe_load(example_text("demo")),
    yaml.safe_load((ROOT / "manifests/examples/pipeline.yaml").read_text()),
]


@pytest.mark.parametrize("doc", GOOD, ids=["demo", "example"])
def test_valid_pipelines_pass_every_rule(doc: dict) -> None:
    assert failures(doc) == []
    validate_document(TrainingPipeline, doc)


def bad(change) -> dict:
    doc = copy.deepcopy(GOOD[0])
    change(doc)
    return doc


def _stages(doc):
    return doc["spec"]["stages"]


BAD = {
    "duplicate stage names": (lambda d: _stages(d)[1].update(name="data"), "stage names must be unique"),
    "reference to no stage": (
        lambda d: _stages(d)[1]["inputs"].update(corpus="stage://nope"),
        "must name another stage",
    ),
    "reference to itself": (
        lambda d: _stages(d)[1]["inputs"].update(corpus="stage://tokenizer"),
        "must name another stage",
    ),
    "another kind's params": (lambda d: _stages(d)[1]["params"].update(seqLen=128), "params of a tokenizer stage"),
    "sft params on rlhf": (lambda d: _stages(d)[5]["params"].update(packing="document"), "params of a rlhf stage"),
    "name starts with a digit": (lambda d: d["metadata"].update(name="7b"), "DNS-1035"),
    "name too long": (lambda d: d["metadata"].update(name="a" * 41), "at most 40 characters"),
    "Service name too long": (
        lambda d: (d["metadata"].update(name="a" * 40), _stages(d)[5].update(name="r" * 14)),
        "<pipeline>-<stage>-worker-<i>",
    ),
    "replicas make the Service name too long": (
        lambda d: (d["metadata"].update(name="a" * 40), _stages(d)[5].update(name="r" * 12, replicas=102)),
        "<pipeline>-<stage>-worker-<i>",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_cel_and_the_models_refuse_the_same(name: str) -> None:
    change, message = BAD[name]
    doc = bad(change)
    assert any(message in m for m in failures(doc)), failures(doc)
    with pytest.raises(SpecError):
        validate_document(TrainingPipeline, doc, stage_kinds=STAGE_KINDS)


def test_replica_rule_boundary_matches_the_model() -> None:
    """CEL's arithmetic and rules.py agree at exactly 63 and 64 characters."""
    for stage_len, replicas, ok in ((13, 1, True), (14, 1, False), (13, 11, True), (13, 12, False)):
        doc = bad(
            lambda d, n=stage_len, r=replicas: (
                d["metadata"].update(name="a" * 40),
                _stages(d)[5].update(name="r" * n, replicas=r),
            )
        )
        assert (failures(doc) == []) is ok, (stage_len, replicas)
        try:
            validate_document(TrainingPipeline, doc, stage_kinds=STAGE_KINDS)
            assert ok
        except SpecError as exc:
            assert not ok and any("Service named" in p for p in exc.problems)


def test_ablation_names_are_dns_1035_too() -> None:
    doc = {"metadata": {"name": "1-abl"}, "spec": {}}
    assert any("DNS-1035" in m for m in failures(doc, ABLATION))
