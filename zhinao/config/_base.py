"""The one pydantic base every spec model derives from."""

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
    )

    def to_wire(self) -> dict:
        """The camelCase JSON-compatible form, as written in a spec file."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
