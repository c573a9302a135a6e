"""Read a TrainingPipeline from YAML or JSON text and validate it."""

from pathlib import Path

import yaml
from pydantic import ValidationError

from zhinao_k8s.api.errors import format_errors
from zhinao_k8s.api.v1alpha1 import STAGE_KINDS, TrainingPipeline


class SpecError(ValueError):
    """A spec that cannot be used; `problems` holds one `path: reason` line each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def parse_pipeline(text: str, source: str = "<spec>") -> TrainingPipeline:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "document"
        raise SpecError(source, [f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(doc, dict):
        raise SpecError(source, ["document must be a mapping with apiVersion, kind, metadata and spec"])
    try:
        return TrainingPipeline.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc, STAGE_KINDS)) from None


def load_pipeline(path: str | Path) -> TrainingPipeline:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(str(path), [f"cannot read file ({exc.strerror})"]) from None
    return parse_pipeline(text, str(path))
