"""What one training process is told about its stage: the contract between renderer and trainer.

The renderer serialises a `StageRuntime` to a JSON file (on a cluster a ConfigMap mounted into every
replica's pod, locally a file the runner writes) and points `ZHINAO_STAGE_SPEC_FILE` at it;
`python -m zhinao` reads it back. A file, not an environment variable: a stage's params can be
larger than the kernel's 128 KiB limit on one variable (a URL blacklist inline, say). Credentials
never travel here: they arrive as `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` from a Secret
reference.
"""

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from zhinao.config._base import SpecModel

ENV_STAGE_SPEC_FILE = "ZHINAO_STAGE_SPEC_FILE"
ENV_S3_ENDPOINT = "ZHINAO_S3_ENDPOINT"
ENV_METRICS_PORT = "ZHINAO_METRICS_PORT"
ENV_TERMINATION_LOG = "ZHINAO_TERMINATION_LOG"
"""Where a failing process writes its one-line reason (default: Kubernetes' /dev/termination-log)."""

DEFAULT_TERMINATION_LOG = "/dev/termination-log"


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

    upstream: list[str] = Field(default_factory=list)
    """Names of the inputs that other stages of the pipeline produce: the pod waits for their
    success markers before it starts (`python -m zhinao.wait_inputs`)."""

    output: str
    """URI prefix this stage writes its results, checkpoints and metrics log under."""

    overwrite: bool = False
    """Replace an output a run with a different fingerprint wrote (`zhinao-k8s run --overwrite`),
    instead of refusing to start."""

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_file(cls, environ: dict[str, str] | None = None) -> "StageRuntime":
        """Read the file `ZHINAO_STAGE_SPEC_FILE` names; every problem is one line naming the file."""
        environ = os.environ if environ is None else environ
        path = environ.get(ENV_STAGE_SPEC_FILE)
        if not path:
            raise RuntimeError(f"{ENV_STAGE_SPEC_FILE} is not set: run stages through `zhinao-k8s run` or a PyTorchJob")
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except OSError as exc:
            raise RuntimeError(f"stage spec {path}: cannot read: {exc.strerror or exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise RuntimeError(f"stage spec {path}: {where}: {first['msg']}") from None
