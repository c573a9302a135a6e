"""What one training process is told about its stage: the contract between renderer and trainer.

The renderer serialises a `StageRuntime` into the `ZHINAO_STAGE_SPEC` environment variable of every
replica; `python -m zhinao` reads it back. Credentials never travel here: they arrive as
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` from a Secret reference.
"""

import json
import os
from typing import Any

from pydantic import Field

from zhinao.config._base import SpecModel

ENV_STAGE_SPEC = "ZHINAO_STAGE_SPEC"
ENV_S3_ENDPOINT = "ZHINAO_S3_ENDPOINT"
ENV_METRICS_PORT = "ZHINAO_METRICS_PORT"


class StageRuntime(SpecModel):
    pipeline: str
    """Name of the TrainingPipeline this stage belongs to (a metrics label)."""

    stage: str
    """Name of the stage inside the pipeline (a metrics label)."""

    kind: str
    """Stage kind: selects the `zhinao.stages.<kind>` module."""

    params: dict[str, Any] = Field(default_factory=dict)
    """The stage's typed hyperparameters in wire form; the stage module validates them."""

    inputs: dict[str, str] = Field(default_factory=dict)
    """Named input URIs, already resolved (s3://bucket/prefix or file:///path)."""

    output: str
    """URI prefix this stage writes its results, checkpoints and metrics log under."""

    def to_env(self) -> str:
        return json.dumps(self.to_wire(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "StageRuntime":
        environ = os.environ if environ is None else environ
        raw = environ.get(ENV_STAGE_SPEC)
        if not raw:
            raise RuntimeError(f"{ENV_STAGE_SPEC} is not set: run stages through `zhinao-k8s run` or a PyTorchJob")
        return cls.model_validate_json(raw)
