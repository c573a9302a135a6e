"""The operator's decisions for an Ablation: (ablation, observed children, last status) -> actions + status.

Pure, like plan_pipeline.py: no I/O, no kubernetes or kopf imports, the clock is an argument;
`reconcile.py` lists the children, calls `plan_ablation` and carries out what it returns.

The steps, one after the other:
- prepare: the TrainingPipeline `<ablation>-data` processes the base corpus and the recipes (one
  distributed data-stage PyTorchJob each; absent when nothing needs processing), then the PyTorchJob
  `<ablation>-prepare` builds the data every run reads from their outputs (held-out split, shared
  tokenizer, recipe mixtures; see zhinao.ablation.prepare).
- train: once it has Succeeded, one TrainingPipeline per recipe x seed (`render/ablation_runs.expand_runs`),
  owned by the Ablation and labelled with it; the TrainingPipeline controller runs them.
- evaluate: once every run has Succeeded, the PyTorchJob `<ablation>-evaluate` scores every run
  and writes the report; the Ablation is then Succeeded with `status.report`.

Names are deterministic, so planning twice never creates twice. A step's job Failed (after its
backoffLimit) or a Failed run makes the Ablation Failed, naming it; the other runs go on. Deleting
the failed object runs that step again. A step that has Succeeded is remembered in
`status.conditions`, so a child removed afterwards (kubectl delete, a TTL) is not run again.
"""

from dataclasses import dataclass, field
from typing import Literal

from zhinao_k8s.api.ablation import Ablation
from zhinao_k8s.api.status import AblationPhase, AblationStatus, Condition, RunCounts
from zhinao_k8s.api.v1alpha1 import TrainingPipeline
from zhinao_k8s.controller.pipeline_status import job_phase
from zhinao_k8s.controller.plan_pipeline import CreateJob
from zhinao_k8s.render.ablation import Step, render_step_job, step_job_name
from zhinao_k8s.render.ablation_runs import Run, data_pipeline, expand_runs, report_uri

PREPARED, TRAINED, EVALUATED = "Prepared", "Trained", "Evaluated"
STEP_CONDITIONS: dict[str, str] = {"prepare": PREPARED, "train": TRAINED, "evaluate": EVALUATED}
STEP_PHASES: dict[str, AblationPhase] = {"prepare": "Preparing", "train": "Training", "evaluate": "Evaluating"}
FAILED_REASONS = {"prepare": "PrepareFailed", "train": "RunFailed", "evaluate": "EvaluateFailed"}
CONDITION_STATUS = {"Succeeded": "True", "Failed": "False", "Running": "Unknown"}


@dataclass(frozen=True)
class CreatePipeline:
    name: str
    body: dict = field(repr=False)


AblationAction = CreateJob | CreatePipeline


@dataclass(frozen=True)
class AblationPlan:
    actions: tuple[AblationAction, ...]
    status: AblationStatus


@dataclass(frozen=True)
class _Outcome:
    """Where one step stands: Succeeded, Failed (with why) or still going (Running)."""

    state: Literal["Succeeded", "Failed", "Running"]
    message: str | None = None


def ablation_from_body(body: dict) -> Ablation:
    """An Ablation from the object the API server holds (server-set metadata dropped)."""
    meta = body.get("metadata") or {}
    return Ablation.model_validate(
        {
            "metadata": {
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "labels": meta.get("labels") or {},
            },
            "spec": body.get("spec") or {},
        }
    )


def build_step_job(ablation: Ablation, step: Step, owner: dict | None) -> dict:
    job = render_step_job(ablation, step)
    if owner is not None:
        job["metadata"]["ownerReferences"] = [owner]
    return job


def build_pipeline(pipeline: TrainingPipeline, owner: dict | None) -> dict:
    body = pipeline.to_wire()
    if owner is not None:
        body["metadata"]["ownerReferences"] = [owner]
    return body


def _deleting(obj: dict) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _job_step(
    ablation: Ablation, step: Step, job: dict | None, done: bool, owner: dict | None, actions: list[AblationAction]
) -> _Outcome:
    name = step_job_name(ablation, step)
    if done:
        return _Outcome("Succeeded", f"PyTorchJob {name} Succeeded")
    if job is None:
        actions.append(CreateJob(name=name, body=build_step_job(ablation, step, owner)))
        return _Outcome("Running", f"PyTorchJob {name} is Created")  # what the next pass reads from it
    if _deleting(job):  # deleted by hand to run the step again: created anew once it is gone
        return _Outcome("Running", f"PyTorchJob {name} is being deleted")
    phase, cond = job_phase(job)
    if phase == "Failed":
        return _Outcome("Failed", f"PyTorchJob {name} failed" + (f": {cond.message}" if cond and cond.message else ""))
    if phase == "Succeeded":
        return _Outcome("Succeeded", f"PyTorchJob {name} Succeeded")
    return _Outcome("Running", f"PyTorchJob {name} is {phase}")


def _data(pipeline: TrainingPipeline, body: dict | None, owner: dict | None, actions: list[AblationAction]) -> _Outcome:
    name = pipeline.metadata.name
    if body is None:
        actions.append(CreatePipeline(name=name, body=build_pipeline(pipeline, owner)))
        return _Outcome("Running", f"TrainingPipeline {name} is Created")
    if _deleting(body):
        return _Outcome("Running", f"TrainingPipeline {name} is being deleted")
    status = body.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        return _Outcome(
            "Failed", f"TrainingPipeline {name} failed" + (f": {status['message']}" if status.get("message") else "")
        )
    return _Outcome("Succeeded" if phase == "Succeeded" else "Running", f"TrainingPipeline {name} is {phase}")


def _prepare(
    ablation: Ablation,
    jobs: dict[str, dict],
    pipelines: dict[str, dict],
    done: bool,
    owner: dict | None,
    actions: list[AblationAction],
) -> _Outcome:
    """The data pipeline (when there is one), then the prepare job."""
    data = None if done else data_pipeline(ablation)
    if data is not None:
        outcome = _data(data, pipelines.get(data.metadata.name), owner, actions)
        if outcome.state != "Succeeded":
            return outcome
    return _job_step(ablation, "prepare", jobs.get(step_job_name(ablation, "prepare")), done, owner, actions)


def _train(
    runs: list[Run], observed: dict[str, dict], done: bool, owner: dict | None, actions: list[AblationAction]
) -> tuple[_Outcome, RunCounts]:
    if done:
        return _Outcome("Succeeded", f"{len(runs)}/{len(runs)} runs succeeded"), RunCounts(
            total=len(runs), succeeded=len(runs)
        )
    succeeded, failed = 0, []
    for run in runs:
        body = observed.get(run.name)
        if body is None:
            actions.append(CreatePipeline(name=run.name, body=build_pipeline(run.pipeline, owner)))
            continue
        status = body.get("status") or {}
        if status.get("phase") == "Succeeded" and not _deleting(body):
            succeeded += 1
        elif status.get("phase") == "Failed":
            failed.append(f"run {run.name} failed" + (f": {status['message']}" if status.get("message") else ""))
    counts = RunCounts(total=len(runs), succeeded=succeeded, failed=len(failed))
    if failed:
        return _Outcome("Failed", "; ".join(failed)), counts
    return _Outcome(
        "Succeeded" if succeeded == len(runs) else "Running", f"{succeeded}/{len(runs)} runs succeeded"
    ), counts


def _since(unchanged: bool, before: str | None, now: str) -> str:
    """A transition time: kept while nothing changed, else now."""
    return before if unchanged and before else now


def _condition(previous: AblationStatus, kind: str, outcome: _Outcome | None, now: str) -> Condition:
    if outcome is None:  # an earlier step has not Succeeded
        status, reason, message = "Unknown", "Waiting", None
    else:
        status, reason, message = CONDITION_STATUS[outcome.state], outcome.state, outcome.message
    before = previous.condition(kind)
    since = _since(before is not None and before.status == status, before and before.last_transition_time, now)
    return Condition(type=kind, status=status, reason=reason, message=message, last_transition_time=since)


def plan_ablation(
    ablation: Ablation,
    jobs: dict[str, dict],
    pipelines: dict[str, dict],
    previous: AblationStatus,
    *,
    now: str,
    owner: dict | None = None,
    generation: int | None = None,
) -> AblationPlan:
    """Decide what to do next. `jobs`: the ablation's PyTorchJobs by name (prepare, evaluate);
    `pipelines`: its TrainingPipelines by name (the data pipeline and the runs)."""
    runs = expand_runs(ablation)
    actions: list[AblationAction] = []
    outcomes: dict[str, _Outcome] = {}
    counts = RunCounts(total=len(runs))
    outcomes["prepare"] = _prepare(ablation, jobs, pipelines, previous.done(PREPARED), owner, actions)
    if outcomes["prepare"].state == "Succeeded":
        outcomes["train"], counts = _train(runs, pipelines, previous.done(TRAINED), owner, actions)
        if outcomes["train"].state == "Succeeded":
            outcomes["evaluate"] = _job_step(
                ablation,
                "evaluate",
                jobs.get(step_job_name(ablation, "evaluate")),
                previous.done(EVALUATED),
                owner,
                actions,
            )
    step, outcome = list(outcomes.items())[-1]  # the last step reached decides the phase
    if outcome.state == "Failed":
        phase, reason = "Failed", FAILED_REASONS[step]
    elif step == "evaluate" and outcome.state == "Succeeded":
        phase, reason = "Succeeded", "ReportWritten"
    else:
        phase, reason = STEP_PHASES[step], "Running"
    same_phase = previous.phase == phase
    report = report_uri(ablation) if phase == "Succeeded" else None
    status = AblationStatus(
        phase=phase,
        progress=f"{counts.succeeded}/{counts.total}",
        runs=counts,
        reason=reason,
        message=f"report: {report}" if report else outcome.message,
        start_time=previous.start_time or now,
        completion_time=_since(same_phase, previous.completion_time, now) if phase in ("Succeeded", "Failed") else None,
        last_transition_time=_since(same_phase, previous.last_transition_time, now),
        report=report,
        observed_generation=generation if generation is not None else previous.observed_generation,
        conditions=[_condition(previous, kind, outcomes.get(s), now) for s, kind in STEP_CONDITIONS.items()],
    )
    return AblationPlan(actions=tuple(actions), status=status)


__all__ = [
    "AblationPlan",
    "AblationAction",
    "CreatePipeline",
    "plan_ablation",
    "ablation_from_body",
    "build_step_job",
    "build_pipeline",
]
