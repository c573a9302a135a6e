"""controller/fit_gate.py and its place in plan_pipeline: a GPU stage starts only once its memory plan
Job says it fits. Tables, no cluster."""

from dataclasses import dataclass

import pytest
from schemas import validate_k8s

from zhinao_k8s.api.status import PipelineStatus, StageStatus
from zhinao_k8s.api.v1alpha1 import TrainingPipeline
from zhinao_k8s.controller.fit_gate import (
    REASON_PLAN_FAILED,
    REASON_PLANNING,
    REASON_REFUSED,
    CreatePlanJob,
    DeletePlanJob,
    fit_gate,
)
from zhinao_k8s.controller.plan_pipeline import CreateJob, PlanJobs, plan_pipeline
from zhinao_k8s.render.plan_job import (
    ANNOTATION_PLAN_HASH,
    ENV_PLAN_PIPELINE,
    PlanResult,
    plan_hash,
    plan_job_name,
    render_plan_job,
)

NOW = "2026-01-01T01:00:00Z"
REFUSAL = "spec.stages[1].resources.gpuMemory: stage 'pt' needs 160.9 GB per GPU (parameters 31.1, ...)"


def pipeline(*, gpu: int = 8, memory_plan: bool = True, micro_batch: int = 1, image: str | None = None):
    return TrainingPipeline.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "team-a"},
            "spec": {
                "storage": {"uri": "s3://bucket/runs", "endpoint": "http://minio:9000"},
                "memoryPlan": memory_plan,
                **({"image": image} if image else {}),
                "stages": [
                    {"name": "tok", "kind": "tokenizer", "inputs": {"corpus": "s3://bucket/corpus"}},
                    {
                        "name": "pt",
                        "kind": "pretrain",
                        "resources": {"gpu": gpu},
                        "nprocPerNode": max(gpu, 1),
                        "inputs": {"tokenizer": "stage://tok"},
                        "params": {"microBatchSize": micro_batch},
                    },
                    {
                        "name": "sft",
                        "kind": "sft",
                        "resources": {"gpu": gpu},
                        "nprocPerNode": max(gpu, 1),
                        "inputs": {"model": "stage://pt", "data": "s3://bucket/chat"},
                    },
                ],
            },
        }
    )


def plan_job(p: TrainingPipeline, stage: str = "pt", end: str | None = "Complete", *, stale: bool = False) -> dict:
    body = render_plan_job(p, p.stage(stage))
    if stale:
        body["metadata"]["annotations"][ANNOTATION_PLAN_HASH] = "0" * 16
    if end:
        body["status"] = {"conditions": [{"type": end, "status": "True"}]}
    return body


def result(verdict: str, message: str = "m") -> str:
    return PlanResult("pt", verdict, message).to_json()


@dataclass
class Case:
    name: str
    gpu: int = 8
    memory_plan: bool = True
    job: str | None = "none"  # none | running | complete | failed | stale
    message: str | None = None
    state: str = "open"
    action: type | None = None
    says: str = ""


CASES = [
    Case("cpu stage: no plan", gpu=0, job="none"),
    Case("memoryPlan false: no plan", memory_plan=False),
    Case(
        "no plan job: create it and wait",
        state="wait",
        action=CreatePlanJob,
        says="planning GPU memory in Job demo-pt-plan",
    ),
    Case("plan running: wait", job="running", state="wait", says="planning GPU memory"),
    Case("fits: open", job="complete", message=result("fits", "needs 22.7 GB of 80.0 GB"), says="needs 22.7 GB"),
    Case("not plannable: open", job="complete", message=result("skipped", "not planned: reward")),
    Case(
        "does not fit: refused with the numbers",
        job="complete",
        message=result("refused", REFUSAL),
        state="refused",
        says="needs 160.9 GB per GPU",
    ),
    Case(
        "plan crashed: failed with its last line",
        job="failed",
        message="Traceback...\nMemoryError: boom",
        state="failed",
        says="memory plan Job demo-pt-plan failed: MemoryError: boom",
    ),
    Case("complete without a verdict: plan again", job="complete", message=None, state="wait", action=DeletePlanJob),
    Case(
        "spec changed: the stale plan goes",
        job="stale",
        message=result("fits"),
        state="wait",
        action=DeletePlanJob,
        says="the stage changed",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gate(case: Case) -> None:
    p = pipeline(gpu=case.gpu, memory_plan=case.memory_plan)
    observed = {
        "none": None,
        "running": plan_job(p, end=None),
        "complete": plan_job(p),
        "failed": plan_job(p, end="Failed"),
        "stale": plan_job(p, stale=True),
    }[case.job]
    gate = fit_gate(p, p.stage("pt"), observed, case.message, owner=None)
    assert gate.state == case.state
    assert type(gate.action) is case.action if case.action else gate.action is None
    assert case.says in (gate.message or "")


def test_plan_hash_follows_what_the_plan_reads() -> None:
    base = pipeline()
    sft = base.stage("sft")
    assert plan_hash(base, sft) == plan_hash(pipeline(), pipeline().stage("sft"))
    # The SFT stage's model is the pretrain stage's: a pretrain change re-plans the SFT stage too.
    assert plan_hash(pipeline(micro_batch=2), pipeline(micro_batch=2).stage("sft")) != plan_hash(base, sft)
    assert plan_hash(pipeline(image="registry.example/trainer:2"), pipeline().stage("pt")) != plan_hash(
        base, base.stage("pt")
    )


def test_the_plan_job_is_a_valid_cpu_only_batch_job() -> None:
    p = pipeline()
    job = render_plan_job(p, p.stage("pt"))
    validate_k8s(job)
    assert job["metadata"]["name"] == plan_job_name(p, p.stage("pt")) == "demo-pt-plan"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["-m", "zhinao_k8s.jobs.plan_stage", "pt"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert TrainingPipeline.model_validate_json(env[ENV_PLAN_PIPELINE]) == p


def tok_succeeded() -> dict:
    cond = {"type": "Succeeded", "status": "True", "lastTransitionTime": "2026-01-01T00:10:00Z"}
    return {"demo-tok": {"metadata": {"name": "demo-tok"}, "status": {"conditions": [cond]}}}


def _stage(plan, name: str) -> StageStatus:
    return next(s for s in plan.status.stages if s.name == name)


def test_pipeline_waits_for_the_plan_then_creates_the_job() -> None:
    p = pipeline()
    done = tok_succeeded()
    previous = PipelineStatus(stages=[StageStatus(name="tok", phase="Succeeded", attempt=1)])

    waiting = plan_pipeline(p, done, previous, now=NOW)
    (action,) = waiting.actions
    assert isinstance(action, CreatePlanJob) and action.name == "demo-pt-plan"
    assert (_stage(waiting, "pt").phase, _stage(waiting, "pt").reason) == ("Pending", REASON_PLANNING)

    plans = PlanJobs({"demo-pt-plan": plan_job(p)}, {"demo-pt-plan": result("fits")})
    go = plan_pipeline(p, done, waiting.status, now=NOW, plans=plans)
    (action,) = go.actions
    assert isinstance(action, CreateJob) and action.name == "demo-pt"
    assert (_stage(go, "pt").phase, _stage(go, "pt").attempt) == ("Created", 1)


def test_a_refused_stage_fails_the_pipeline_with_the_numbers_until_the_spec_changes() -> None:
    p = pipeline()
    done = tok_succeeded()
    previous = PipelineStatus(stages=[StageStatus(name="tok", phase="Succeeded", attempt=1)])
    plans = PlanJobs({"demo-pt-plan": plan_job(p)}, {"demo-pt-plan": result("refused", REFUSAL)})

    refused = plan_pipeline(p, done, previous, now=NOW, plans=plans)
    assert refused.actions == ()
    stage = _stage(refused, "pt")
    assert (stage.phase, stage.reason, stage.message) == ("Failed", REASON_REFUSED, REFUSAL)
    assert [(c.type, c.status) for c in stage.conditions] == [("MemoryPlanned", "False")]
    assert refused.status.phase == "Failed"
    assert refused.status.message == f"stage 'pt' failed before it started: {REFUSAL}"
    # Planned again with the same verdict: nothing changes, no action.
    again = plan_pipeline(p, done, refused.status, now="2026-01-01T02:00:00Z", plans=plans)
    assert again.actions == () and again.status == refused.status

    # The spec is fixed (a smaller micro-batch): the old plan is stale and is replaced.
    fixed = pipeline(micro_batch=2)
    replanned = plan_pipeline(fixed, done, refused.status, now=NOW, plans=plans)
    (action,) = replanned.actions
    assert isinstance(action, DeletePlanJob)
    assert _stage(replanned, "pt").phase == "Pending" and replanned.status.phase != "Failed"


def test_a_plan_that_cannot_run_fails_the_stage() -> None:
    p = pipeline()
    previous = PipelineStatus(stages=[StageStatus(name="tok", phase="Succeeded", attempt=1)])
    done = tok_succeeded()
    plans = PlanJobs({"demo-pt-plan": plan_job(p, end="Failed")}, {"demo-pt-plan": "ErrImagePull"})
    out = plan_pipeline(p, done, previous, now=NOW, plans=plans)
    assert _stage(out, "pt").reason == REASON_PLAN_FAILED and out.status.phase == "Failed"
    assert "spec.memoryPlan" in out.status.message
