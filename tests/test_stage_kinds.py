"""One registry of stage kinds (zhinao.config.kinds): the spec, the stage modules and the docs agree."""

import re
from importlib import import_module
from pathlib import Path
from typing import get_args

from zhinao.config.kinds import KIND_NAMES, STAGE_KINDS
from zhinao.stages import STAGE_MODULES
from zhinao_k8s.api.v1alpha1 import STAGE_CLASSES, Stage
from zhinao_k8s.api.v1alpha1 import STAGE_KINDS as SPEC_KINDS

ROOT = Path(__file__).resolve().parents[1]


def test_the_spec_accepts_exactly_the_registered_kinds():
    union = get_args(get_args(Stage)[0])
    assert SPEC_KINDS == KIND_NAMES
    assert union == STAGE_CLASSES
    assert [get_args(m.model_fields["kind"].annotation) for m in union] == [(k,) for k in KIND_NAMES]
    for model, kind in zip(union, STAGE_KINDS, strict=True):
        assert model.__name__ == kind.spec_model
        assert model.model_fields["params"].annotation is kind.params


def test_every_kind_has_a_stage_module_with_its_params_and_nothing_else_does():
    modules = {p.stem for p in (ROOT / "zhinao" / "stages").glob("*.py") if p.name != "__init__.py"}
    assert modules == set(KIND_NAMES) == set(STAGE_MODULES)
    for kind in STAGE_KINDS:
        module = import_module(kind.module)
        assert module.Params is kind.params, kind.kind
        assert callable(module.run)


def test_the_readme_lists_every_kind():
    line = next(ln for ln in (ROOT / "README.md").read_text().split("\n\n") if ln.startswith("Stage kinds:"))
    assert sorted(re.findall(r"`([a-z]+)`", line)) == sorted(KIND_NAMES)


def test_the_docs_table_lists_every_kind_in_order():
    text = (ROOT / "docs" / "kubernetes.md").read_text().split("Stage kinds (registered once", 1)[1]
    text = text.split("\n\n")[1]  # the table after the sentence
    rows = re.findall(r"^\| `([a-z]+)` \|", text, flags=re.MULTILINE)
    assert rows == list(KIND_NAMES)
