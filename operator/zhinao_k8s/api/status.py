"""The `status` of a TrainingPipeline and of an Ablation: what the operator writes, as models.

Pure: no I/O, no kubernetes or kopf imports. `api/crd.py` turns these models into the CRDs'
status schemas, so what the operator writes and what the API server accepts cannot drift apart;
the controller (`controller/`) computes them, the CLI reads them.
"""

from typing import Literal, TypeVar

from pydantic import Field

from zhinao.config._base import SpecModel

StagePhase = Literal["Pending", "Created", "Running", "Restarting", "Suspended", "Retrying", "Succeeded", "Failed"]
PipelinePhase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]
AblationPhase = Literal["Pending", "Preparing", "Training", "Evaluating", "Succeeded", "Failed"]
TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed"})


class Condition(SpecModel):
    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None


class StageStatus(SpecModel):
    name: str
    """Stage name from the spec."""

    phase: StagePhase = "Pending"
    job_name: str | None = None
    """The stage's PyTorchJob (deterministic: `<pipeline>-<stage>`)."""

    attempt: int = 0
    """1 for the first run of the stage's PyTorchJob, 2 for the first retry, ...; 0 before it starts."""

    reason: str | None = None
    message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    last_transition_time: str | None = None
    """When `phase` last changed."""

    output_uri: str | None = None
    """Where the stage writes; the next stage reads its `stage://` inputs from here."""

    conditions: list[Condition] = Field(default_factory=list)
    """The PyTorchJob's conditions, mirrored as the training operator reported them."""


class PipelineStatus(SpecModel):
    phase: PipelinePhase = "Pending"
    current_stage: str | None = None
    """The first stage that has not Succeeded (the last stage once the pipeline has)."""

    progress: str | None = None
    """`<succeeded stages>/<stages>`, for `kubectl get`."""

    reason: str | None = None
    message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None
    stages: list[StageStatus] = Field(default_factory=list)

    def stage(self, name: str) -> StageStatus | None:
        return next((s for s in self.stages if s.name == name), None)


class RunCounts(SpecModel):
    total: int = 0
    """recipes x seeds."""

    succeeded: int = 0
    failed: int = 0


class AblationStatus(SpecModel):
    phase: AblationPhase = "Pending"
    progress: str | None = None
    """`<succeeded runs>/<runs>`, for `kubectl get`."""

    runs: RunCounts = Field(default_factory=RunCounts)
    reason: str | None = None
    message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    last_transition_time: str | None = None
    """When `phase` last changed."""

    report: str | None = None
    """URI of report.md once Succeeded; report.json is beside it (`zhinao-k8s ablation report NAME`)."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    """Prepared, Trained, Evaluated: True once that step has Succeeded (it is never run again),
    False when it failed, Unknown before."""

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    def done(self, kind: str) -> bool:
        cond = self.condition(kind)
        return cond is not None and cond.status == "True"


S = TypeVar("S", bound=SpecModel)


def read_status(raw: dict | None, model: type[S] = PipelineStatus) -> S:
    """The status as the operator last wrote it; fields it does not own (kopf's) are ignored."""
    if not raw:
        return model()
    known = {k: v for k, v in raw.items() if k in model.model_fields or _snake(k) in model.model_fields}
    try:
        return model.model_validate(known)
    except ValueError:
        return model()  # written by an older operator: rebuilt from the children


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def printer_fields(status: dict | None) -> dict[str, str]:
    """The columns `kubectl get trainingpipelines` and `zhinao-k8s list` show."""
    status = status or {}
    return {
        "phase": status.get("phase") or "Pending",
        "stage": status.get("currentStage") or "",
        "progress": status.get("progress") or "",
    }
