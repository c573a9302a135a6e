"""Read a TrainingPipeline (or another zhinao.ai document) from YAML or JSON text and validate it."""

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from zhinao_k8s.api.errors import format_errors
from zhinao_k8s.api.v1alpha1 import STAGE_KINDS, TrainingPipeline


class SpecError(ValueError):
    """A spec that cannot be used; `problems` holds one `path: reason` line each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


M = TypeVar("M", bound=BaseModel)


def parse_document(model: type[M], text: str, source: str = "<spec>", stage_kinds: tuple[str, ...] = ()) -> M:
    """A YAML or JSON document validated as `model`; every problem a `SpecError` line."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "document"
        raise SpecError(source, [f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(doc, dict):
        raise SpecError(source, ["document must be a mapping with apiVersion, kind, metadata and spec"])
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc, stage_kinds)) from None


def load_document(model: type[M], path: str | Path, stage_kinds: tuple[str, ...] = ()) -> M:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(str(path), [f"cannot read file ({exc.strerror})"]) from None
    return parse_document(model, text, str(path), stage_kinds)


def parse_pipeline(text: str, source: str = "<spec>") -> TrainingPipeline:
    return parse_document(TrainingPipeline, text, source, STAGE_KINDS)


def load_pipeline(path: str | Path) -> TrainingPipeline:
    return load_document(TrainingPipeline, path, STAGE_KINDS)
