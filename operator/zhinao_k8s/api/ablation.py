"""`Ablation` (zhinao.ai/v1alpha1): compare data recipes on a small proxy model, with statistics.

The spec is the training side's `AblationParams` (recipes, base mixture, share, proxy, seeds,
evaluations) plus what every TrainingPipeline has (image, storage, metrics). The operator and
`zhinao-k8s ablation` turn it into one TrainingPipeline per recipe x seed (ablation_plan.py).
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from zhinao.config._base import SpecModel
from zhinao.config.ablation import AblationParams
from zhinao_k8s.api.errors import format_errors
from zhinao_k8s.api.load import SpecError
from zhinao_k8s.api.v1alpha1 import API_VERSION, DEFAULT_IMAGE, Metadata, Metrics, Storage

KIND = "Ablation"
MAX_RUN_NAME = 40
"""Run names `<ablation>-<recipe>-s<k>` become TrainingPipeline names (at most 40 characters)."""


class AblationSpec(AblationParams):
    image: str = DEFAULT_IMAGE
    """Trainer image every run uses."""

    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    storage: Storage = Field(default_factory=Storage)
    """Runs write `<uri>/<ablation>-<recipe>-s<k>/pretrain/`; data, evaluations and the report
    go under `<uri>/<ablation>/`."""

    metrics: Metrics = Field(default_factory=Metrics)


class Ablation(SpecModel):
    api_version: Literal["zhinao.ai/v1alpha1"] = API_VERSION
    kind: Literal["Ablation"] = KIND
    metadata: Metadata
    spec: AblationSpec

    @model_validator(mode="after")
    def _run_names_fit(self) -> "Ablation":
        longest = max(len(r.name) for r in self.spec.recipes)
        size = len(self.metadata.name) + 1 + longest + 2 + len(str(self.spec.seeds - 1))
        if size > MAX_RUN_NAME:
            raise ValueError(f"run names `<ablation>-<recipe>-s<k>` would be {size} characters (at most {MAX_RUN_NAME}): "
                             "shorten metadata.name or the recipe names")
        return self


def parse_ablation(text: str, source: str = "<spec>") -> Ablation:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "document"
        raise SpecError(source, [f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(doc, dict):
        raise SpecError(source, ["document must be a mapping with apiVersion, kind, metadata and spec"])
    try:
        return Ablation.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc)) from None


def load_ablation(path: str | Path) -> Ablation:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(str(path), [f"cannot read file ({exc.strerror})"]) from None
    return parse_ablation(text, str(path))
