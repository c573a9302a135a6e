"""`Ablation` (zhinao.ai/v1alpha1): compare data recipes on a small proxy model, with statistics.

The spec is the training side's `AblationParams` (recipes, base mixture, share, proxy, seeds,
evaluations) plus what every TrainingPipeline has (image, storage, metrics). The operator and
`zhinao-k8s ablation` turn it into one TrainingPipeline per recipe x seed (render/ablation_runs.py).
"""

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from zhinao.config._base import FieldErrors, SpecModel
from zhinao.config.ablation import AblationParams
from zhinao_k8s.api import rules
from zhinao_k8s.api.load import load_document, parse_document
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
            raise ValueError(
                f"run names `<ablation>-<recipe>-s<k>` would be {size} characters (at most {MAX_RUN_NAME}): "
                "shorten metadata.name or the recipe names"
            )
        return self

    @model_validator(mode="after")
    def _proxy_resources(self) -> "Ablation":
        """Each run is a pipeline stage with the proxy's resources: refuse here what its stage would."""
        problems = [
            (f"spec.proxy.{key}", reason)
            for key in ("cpu", "memory")
            if (reason := rules.quantity_problem(getattr(self.spec.proxy, key)))
        ]
        if problems:
            raise FieldErrors(problems)
        return self


def parse_ablation(text: str, source: str = "<spec>") -> Ablation:
    return parse_document(Ablation, text, source)


def load_ablation(path: str | Path) -> Ablation:
    return load_document(Ablation, path)
