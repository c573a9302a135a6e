"""The one pydantic base every spec model derives from."""

from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """camelCase on the wire (Kubernetes convention), snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        validate_default=True,
        # `.inf` and `.nan` are valid YAML floats but no valid hyperparameter (and JSON has no form for them).
        allow_inf_nan=False,
    )

    LAYOUT_FIELDS: ClassVar[tuple[str, ...]] = ()
    """Fields that only lay the same training out on the ranks, as the world size does: a run may
    resume with other values, so they are left out of the output's fingerprint (zhinao.fingerprint)."""

    def to_wire(self) -> dict:
        """The camelCase JSON-compatible form, as written in a spec file."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class FieldErrors(ValueError):
    """Raised by a model validator that finds problems in several fields at once: each problem is a
    (path relative to the model, reason) pair, so that the user reads `stages[2].output: reason`."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{path}: {reason}" if path else reason for path, reason in problems))
