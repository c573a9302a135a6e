"""DataParams: report defaults, camelCase wire form, validation, and a docstring on every field."""

import pytest
from pydantic import BaseModel, ValidationError

from zhinao.config.data import TABLE1_MIX, DataParams


def _models(model: type[BaseModel], seen=None):
    seen = seen if seen is not None else set()
    if model in seen:
        return seen
    seen.add(model)
    for f in model.model_fields.values():
        t = f.annotation
        if isinstance(t, type) and issubclass(t, BaseModel):
            _models(t, seen)
    return seen


def test_report_defaults():
    p = DataParams()
    assert p.minhash.num_perm == 128
    assert p.paragraph_dedup.delete_share == 0.3
    assert p.sentence_dedup.guard_tokens == 16
    assert p.mix.targets == TABLE1_MIX and abs(sum(TABLE1_MIX.values()) - 1) < 1e-9
    assert p.mix.max_oversample == 5.0
    assert p.lang_id.english_with_chinese and p.lang_id.english_max_han == 0


def test_every_field_is_documented():
    undocumented = [
        f"{m.__name__}.{name}" for m in _models(DataParams) for name, f in m.model_fields.items() if not f.description
    ]
    assert undocumented == []


def test_wire_form_is_camel_case_and_round_trips():
    wire = DataParams(minhash={"bands": 32, "rows": 4}).to_wire()
    assert wire["paragraphDedup"]["deleteShare"] == 0.3
    assert wire["minhash"]["bands"] == 32
    assert DataParams.model_validate(wire) == DataParams(minhash={"bands": 32, "rows": 4})


@pytest.mark.parametrize(
    "bad",
    [
        {"minhash": {"bands": 20, "rows": 8}},
        {"paragraphDedup": {"deleteShare": 1.5}},
        {"mix": {"maxOversample": 0.5}},
        {"unknown": 1},
    ],
)
def test_invalid_values_are_rejected(bad):
    with pytest.raises(ValidationError):
        DataParams.model_validate(bad)
