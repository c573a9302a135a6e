"""controller/pipeline_status.py: PyTorchJob conditions -> stage phase, stages -> pipeline phase. Tables, no cluster."""

from dataclasses import dataclass

import pytest

from zhinao_k8s.api.status import PipelineStatus, StageStatus
from zhinao_k8s.controller.pipeline_status import (
    job_phase,
    stage_from_job,
    summarize,
)

T0, T1, T2, NOW = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z", "2026-01-01T01:00:00Z"


def cond(type_: str, status: str = "True", at: str = T1, reason: str | None = None, message: str | None = None) -> dict:
    c = {"type": type_, "status": status, "lastTransitionTime": at}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def job(*conditions: dict, suspend: bool = False) -> dict:
    body = {
        "metadata": {"name": "p-s", "creationTimestamp": T0},
        "spec": {"runPolicy": {}},
        "status": {"conditions": list(conditions)},
    }
    if suspend:
        body["spec"]["runPolicy"]["suspend"] = True
    return body


@dataclass
class PhaseCase:
    name: str
    job: dict | None
    phase: str


PHASES = [
    PhaseCase("no job", None, "Pending"),
    PhaseCase("no conditions yet", job(), "Created"),
    PhaseCase("created", job(cond("Created")), "Created"),
    PhaseCase("running", job(cond("Created"), cond("Running")), "Running"),
    PhaseCase(
        "restarting (running flipped off)",
        job(cond("Created"), cond("Running", "False"), cond("Restarting")),
        "Restarting",
    ),
    PhaseCase("succeeded beats a stale Running=True", job(cond("Running"), cond("Succeeded")), "Succeeded"),
    PhaseCase("failed", job(cond("Running", "False"), cond("Failed")), "Failed"),
    PhaseCase("failed beats succeeded", job(cond("Succeeded"), cond("Failed")), "Failed"),
    PhaseCase("suspended condition", job(cond("Created"), cond("Suspended")), "Suspended"),
    PhaseCase("suspend flag before the controller reacts", job(suspend=True), "Suspended"),
    PhaseCase("False conditions only", job(cond("Running", "False")), "Created"),
    PhaseCase("malformed conditions are skipped", job({"type": "Running"}, {"status": "True"}, "junk"), "Created"),
]


@pytest.mark.parametrize("case", PHASES, ids=[c.name for c in PHASES])
def test_job_phase(case: PhaseCase) -> None:
    assert job_phase(case.job)[0] == case.phase


def test_stage_from_job_mirrors_conditions_with_reasons_and_times() -> None:
    observed = job(
        cond("Created", at=T0),
        cond("Running", "False", at=T2),
        cond("Failed", at=T2, reason="PyTorchJobFailed", message="exit 1"),
    )
    st = stage_from_job(
        StageStatus(name="s", phase="Running", attempt=1, last_transition_time=T1),
        observed,
        attempt=1,
        output_uri="s3://b/p/s",
        now=NOW,
    )
    assert (st.phase, st.reason, st.message) == ("Failed", "PyTorchJobFailed", "exit 1")
    assert st.start_time == T0 and st.completion_time == T2
    assert st.last_transition_time == NOW  # Running -> Failed is a transition
    assert [(c.type, c.status, c.last_transition_time) for c in st.conditions] == [
        ("Created", "True", T0),
        ("Running", "False", T2),
        ("Failed", "True", T2),
    ]
    assert st.job_name == "p-s" and st.output_uri == "s3://b/p/s"


def test_stage_from_job_keeps_transition_time_when_phase_is_unchanged() -> None:
    prev = StageStatus(name="s", phase="Running", attempt=1, start_time=T0, last_transition_time=T1)
    st = stage_from_job(prev, job(cond("Created", at=T0), cond("Running", at=T1)), attempt=1, output_uri="u", now=NOW)
    assert st.last_transition_time == T1 and st.start_time == T0


def stages(*phases: str) -> list[StageStatus]:
    return [StageStatus(name=f"s{i}", phase=p, attempt=1 if p != "Pending" else 0) for i, p in enumerate(phases)]


@dataclass
class SummaryCase:
    name: str
    phases: tuple[str, ...]
    suspended: bool
    phase: str
    current: str
    progress: str


SUMMARIES = [
    SummaryCase("nothing started", ("Pending", "Pending"), False, "Pending", "s0", "0/2"),
    SummaryCase("first running", ("Running", "Pending"), False, "Running", "s0", "0/2"),
    SummaryCase("second created", ("Succeeded", "Created"), False, "Running", "s1", "1/2"),
    SummaryCase("retrying counts as running", ("Succeeded", "Retrying"), False, "Running", "s1", "1/2"),
    SummaryCase("all done", ("Succeeded", "Succeeded"), False, "Succeeded", "s1", "2/2"),
    SummaryCase("failed stage", ("Succeeded", "Failed"), False, "Failed", "s1", "1/2"),
    SummaryCase("failed wins over suspend", ("Failed", "Pending"), True, "Failed", "s0", "0/2"),
    SummaryCase("suspended", ("Succeeded", "Suspended"), True, "Suspended", "s1", "1/2"),
    SummaryCase("succeeded wins over suspend", ("Succeeded",), True, "Succeeded", "s0", "1/1"),
]


@pytest.mark.parametrize("case", SUMMARIES, ids=[c.name for c in SUMMARIES])
def test_summarize(case: SummaryCase) -> None:
    out = summarize(stages(*case.phases), suspended=case.suspended, previous=PipelineStatus(), now=NOW)
    assert (out.phase, out.current_stage, out.progress) == (case.phase, case.current, case.progress)
    assert (out.completion_time is not None) == (case.phase in ("Succeeded", "Failed"))


def test_summarize_failed_message_names_stage_and_attempts() -> None:
    failed = [StageStatus(name="sft", phase="Failed", attempt=3, message="OOMKilled")]
    out = summarize(failed, suspended=False, previous=PipelineStatus(start_time=T0), now=NOW)
    assert out.reason == "StageFailed"
    assert out.message == "stage 'sft' failed after 3 attempt(s): OOMKilled"
    assert out.start_time == T0
