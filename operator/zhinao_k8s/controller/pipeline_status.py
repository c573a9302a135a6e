"""A TrainingPipeline's status from what is observed: PyTorchJob conditions -> stage phase;
stages -> pipeline phase.

Pure: no I/O, no kubernetes or kopf imports. The status models themselves are in `api/status.py`.
"""

from zhinao_k8s.api.status import TERMINAL, Condition, PipelineStatus, StagePhase, StageStatus

# The PyTorchJob condition types we mirror, most decisive first: a job can carry several True
# conditions at once (for example Created and Running), and the first True one in this order
# names its phase. Terminal conditions win even when a stale Running=True is left behind
# (kubeflow/trainer#1711).
JOB_CONDITION_ORDER = ("Failed", "Succeeded", "Suspended", "Restarting", "Running", "Created")


def job_conditions(job: dict | None) -> list[Condition]:
    raw = ((job or {}).get("status") or {}).get("conditions") or []
    out = []
    for c in raw:
        if isinstance(c, dict) and c.get("type") and c.get("status"):
            out.append(
                Condition(
                    type=c["type"],
                    status=c["status"],
                    reason=c.get("reason"),
                    message=c.get("message"),
                    last_transition_time=c.get("lastTransitionTime"),
                )
            )
    return out


def job_phase(job: dict | None) -> tuple[StagePhase, Condition | None]:
    """The stage phase a PyTorchJob is in, and the condition that says so (None: no condition yet)."""
    if job is None:
        return "Pending", None
    true = {c.type: c for c in job_conditions(job) if c.status == "True"}
    for kind in JOB_CONDITION_ORDER:
        if kind in true:
            return kind, true[kind]  # type: ignore[return-value]
    if ((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"):
        return "Suspended", None
    return "Created", None


def stage_from_job(
    previous: StageStatus,
    job: dict,
    *,
    attempt: int,
    output_uri: str,
    now: str,
) -> StageStatus:
    """Mirror one observed PyTorchJob into its stage's status."""
    phase, cond = job_phase(job)
    conditions = job_conditions(job)
    created = next((c.last_transition_time for c in conditions if c.type == "Created"), None)
    start = previous.start_time if previous.attempt == attempt and previous.start_time else None
    start = start or created or (job.get("metadata") or {}).get("creationTimestamp") or now
    completion = (cond.last_transition_time or now) if phase in TERMINAL and cond else None
    same = previous.phase == phase and previous.attempt == attempt
    reason = cond.reason if cond else (previous.reason if same else None)
    message = cond.message if cond else (previous.message if same else None)
    return StageStatus(
        name=previous.name,
        phase=phase,
        job_name=(job.get("metadata") or {}).get("name"),
        attempt=attempt,
        reason=reason,
        message=message,
        start_time=start,
        completion_time=completion,
        last_transition_time=_transition(previous, phase, now),
        output_uri=output_uri,
        conditions=conditions,
    )


def _transition(previous: StageStatus, phase: str, now: str) -> str:
    if previous.phase == phase and previous.last_transition_time:
        return previous.last_transition_time
    return now


def with_phase(previous: StageStatus, phase: StagePhase, now: str, **fields) -> StageStatus:
    """`previous` moved to `phase` (keeping its transition time when the phase is unchanged)."""
    return previous.model_copy(
        update={"phase": phase, "last_transition_time": _transition(previous, phase, now), **fields}
    )


def summarize(stages: list[StageStatus], *, suspended: bool, previous: PipelineStatus, now: str) -> PipelineStatus:
    """The pipeline's phase, current stage and progress from its stages' statuses."""
    done = sum(1 for s in stages if s.phase == "Succeeded")
    failed = next((s for s in stages if s.phase == "Failed"), None)
    current = next((s for s in stages if s.phase != "Succeeded"), stages[-1] if stages else None)
    started = any(s.phase != "Pending" for s in stages)
    if failed is not None:
        phase, reason = "Failed", "StageFailed"
        when = f"after {failed.attempt} attempt(s)" if failed.attempt else "before it started"
        message = f"stage {failed.name!r} failed {when}" + (f": {failed.message}" if failed.message else "")
    elif stages and done == len(stages):
        phase, reason, message = "Succeeded", "AllStagesSucceeded", f"{done} stage(s) succeeded"
    elif suspended:
        phase, reason, message = "Suspended", "Suspended", "spec.suspend is true"
    elif started:
        phase, reason = "Running", "StageRunning"
        message = f"stage {current.name!r} is {current.phase}" if current else None
    else:  # the first stage has not started: what it waits for (its memory plan), if anything
        phase, reason, message = "Pending", "Waiting", current.message if current else None
    terminal = phase in ("Succeeded", "Failed")
    return PipelineStatus(
        phase=phase,
        current_stage=(failed or current).name if (failed or current) else None,
        progress=f"{done}/{len(stages)}",
        reason=reason,
        message=message,
        start_time=previous.start_time or (now if started else None),
        completion_time=(previous.completion_time or now) if terminal else None,
        observed_generation=previous.observed_generation,
        stages=stages,
    )
