"""controller/plan_ablation.py: (ablation, observed jobs and runs, last status) -> actions + status. Tables, no cluster."""

import json
from dataclasses import dataclass, field

import pytest
from schemas import validate_pytorchjob  # tests/ is on sys.path (rootdir conftest)

from zhinao_k8s.api.ablation import Ablation
from zhinao_k8s.api.status import AblationStatus, Condition
from zhinao_k8s.controller.plan_ablation import (
    EVALUATED,
    PREPARED,
    TRAINED,
    CreatePipeline,
    ablation_from_body,
    plan_ablation,
)
from zhinao_k8s.controller.plan_pipeline import CreateJob, pipeline_from_body
from zhinao_k8s.render.ablation import ENV_ABLATION_SPEC
from zhinao_k8s.render.ablation_runs import expand_runs
from zhinao_k8s.render.names import LABEL_PIPELINE
from zhinao_k8s.render.pytorchjob import render_pipeline

NOW = "2026-01-01T01:00:00Z"
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:01:00Z"
RUNS = ["abl-a-s0", "abl-a-s1", "abl-b-s0", "abl-b-s1"]
OWNER = {
    "apiVersion": "zhinao.ai/v1alpha1",
    "kind": "Ablation",
    "name": "abl",
    "uid": "u-1",
    "controller": True,
    "blockOwnerDeletion": True,
}


def ablation_doc() -> dict:
    return {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "Ablation",
        "metadata": {"name": "abl", "namespace": "team-a", "labels": {"team": "data"}},
        "spec": {
            "storage": {
                "uri": "s3://bucket/abl-runs",
                "endpoint": "http://minio:9000",
                "credentials": {"secretRef": {"name": "s3-creds"}},
            },
            "base": {"corpus": "s3://bucket/base"},
            "recipes": [{"name": "a", "dataset": "s3://bucket/a"}, {"name": "b", "dataset": "s3://bucket/b"}],
            "seeds": 2,
            "proxy": {
                "modelSize": "tiny",
                "tokens": 40960,
                "seqLen": 64,
                "microBatchSize": 4,
                "gradAccumSteps": 1,
                "replicas": 1,
                "nprocPerNode": 1,
                "gpu": 0,
                "cpu": "2",
                "memory": "4Gi",
                "warmupSteps": 10,
            },
            "evaluations": {"validLoss": {"everySteps": 80}},
        },
    }


ABLATION = Ablation.model_validate(ablation_doc())


def with_data_doc() -> dict:
    """Recipe a is processed by a data stage (and the base too); b is a prepared dataset."""
    doc = ablation_doc()
    doc["spec"]["base"]["data"] = {}
    doc["spec"]["recipes"][0] = {"name": "a", "data": {"minhash": {"enabled": False}}}
    doc["spec"]["corpus"] = "s3://bucket/raw"
    doc["spec"]["dataJobs"] = {"replicas": 3}
    return doc


WITH_DATA = Ablation.model_validate(with_data_doc())


def job(name: str, *true: str, message: str | None = None, deleting: bool = False) -> dict:
    conds = [
        {"type": t, "status": "True", "lastTransitionTime": T1, **({"message": message} if message else {})}
        for t in true
    ]
    meta = {"name": name, "labels": {"zhinao.ai/ablation": "abl"}, **({"deletionTimestamp": T1} if deleting else {})}
    return {"metadata": meta, "status": {"conditions": conds}}


def run(name: str, phase: str | None = "Running", message: str | None = None) -> dict:
    status = {"phase": phase, **({"message": message} if message else {})} if phase else {}
    return {"metadata": {"name": name, "labels": {"zhinao.ai/ablation": "abl"}}, "status": status}


def runs(*phases: str) -> dict:
    return {name: run(name, phase) for name, phase in zip(RUNS, phases)}


def done(*kinds: str) -> AblationStatus:
    return AblationStatus(conditions=[Condition(type=k, status="True", last_transition_time=T0) for k in kinds])


PREPARE_OK = {"abl-prepare": job("abl-prepare", "Created", "Succeeded")}
DATA_OK = {"abl-data": run("abl-data", "Succeeded")}


@dataclass
class Case:
    name: str
    jobs: dict
    pipelines: dict = field(default_factory=dict)
    previous: AblationStatus = field(default_factory=AblationStatus)
    actions: list = field(default_factory=list)  # (type, name)
    phase: str = "Preparing"
    reason: str = "Running"
    progress: str = "0/4"
    conditions: tuple[str, str, str] = ("Unknown", "Unknown", "Unknown")  # Prepared, Trained, Evaluated
    ablation: Ablation = field(default_factory=lambda: ABLATION)


CASES = [
    Case("fresh ablation creates the prepare job", {}, actions=[("CreateJob", "abl-prepare")]),
    Case("prepare running: nothing to do", {"abl-prepare": job("abl-prepare", "Created", "Running")}),
    Case(
        "prepare failed: Failed, nothing created",
        {"abl-prepare": job("abl-prepare", "Failed", message="exit code 2")},
        phase="Failed",
        reason="PrepareFailed",
        conditions=("False", "Unknown", "Unknown"),
    ),
    Case(
        "a failed prepare job being deleted is waited for", {"abl-prepare": job("abl-prepare", "Failed", deleting=True)}
    ),
    Case(
        "recipes to process: the data pipeline first", {}, actions=[("CreatePipeline", "abl-data")], ablation=WITH_DATA
    ),
    Case("data pipeline running: nothing to do", {}, {"abl-data": run("abl-data", "Running")}, ablation=WITH_DATA),
    Case(
        "data pipeline failed: Failed, no prepare job",
        {},
        {"abl-data": run("abl-data", "Failed", "stage 'recipe-a' failed after 1 attempt(s): Error")},
        phase="Failed",
        reason="PrepareFailed",
        conditions=("False", "Unknown", "Unknown"),
        ablation=WITH_DATA,
    ),
    Case(
        "data pipeline succeeded creates the prepare job",
        {},
        DATA_OK,
        actions=[("CreateJob", "abl-prepare")],
        ablation=WITH_DATA,
    ),
    Case(
        "data and prepare succeeded create every run",
        PREPARE_OK,
        DATA_OK,
        actions=[("CreatePipeline", n) for n in RUNS],
        phase="Training",
        conditions=("True", "Unknown", "Unknown"),
        ablation=WITH_DATA,
    ),
    Case(
        "prepared earlier and the data pipeline gone: not processed again",
        {},
        previous=done(PREPARED),
        actions=[("CreatePipeline", n) for n in RUNS],
        phase="Training",
        conditions=("True", "Unknown", "Unknown"),
        ablation=WITH_DATA,
    ),
    Case(
        "prepare succeeded creates every run",
        PREPARE_OK,
        actions=[("CreatePipeline", n) for n in RUNS],
        phase="Training",
        conditions=("True", "Unknown", "Unknown"),
    ),
    Case(
        "prepared earlier and its job gone: not prepared again",
        {},
        previous=done(PREPARED),
        actions=[("CreatePipeline", n) for n in RUNS],
        phase="Training",
        conditions=("True", "Unknown", "Unknown"),
    ),
    Case(
        "only missing runs are created",
        PREPARE_OK,
        pipelines=runs("Running", "Pending"),
        actions=[("CreatePipeline", "abl-b-s0"), ("CreatePipeline", "abl-b-s1")],
        phase="Training",
        conditions=("True", "Unknown", "Unknown"),
    ),
    Case(
        "runs going: counted, nothing to do",
        PREPARE_OK,
        pipelines=runs("Succeeded", "Succeeded", "Running", None),
        phase="Training",
        progress="2/4",
        conditions=("True", "Unknown", "Unknown"),
    ),
    Case(
        "a failed run fails the ablation",
        PREPARE_OK,
        pipelines=runs("Succeeded", "Failed", "Running", "Running"),
        phase="Failed",
        reason="RunFailed",
        progress="1/4",
        conditions=("True", "False", "Unknown"),
    ),
    Case(
        "all runs succeeded creates the evaluate job",
        PREPARE_OK,
        pipelines=runs(*["Succeeded"] * 4),
        actions=[("CreateJob", "abl-evaluate")],
        phase="Evaluating",
        progress="4/4",
        conditions=("True", "True", "Unknown"),
    ),
    Case(
        "trained earlier and the runs gone: not trained again",
        {},
        previous=done(PREPARED, TRAINED),
        actions=[("CreateJob", "abl-evaluate")],
        phase="Evaluating",
        progress="4/4",
        conditions=("True", "True", "Unknown"),
    ),
    Case(
        "evaluate running",
        {**PREPARE_OK, "abl-evaluate": job("abl-evaluate", "Running")},
        pipelines=runs(*["Succeeded"] * 4),
        phase="Evaluating",
        progress="4/4",
        conditions=("True", "True", "Unknown"),
    ),
    Case(
        "evaluate failed",
        {"abl-evaluate": job("abl-evaluate", "Failed")},
        previous=done(PREPARED, TRAINED),
        phase="Failed",
        reason="EvaluateFailed",
        progress="4/4",
        conditions=("True", "True", "False"),
    ),
    Case(
        "evaluate succeeded: Succeeded",
        {"abl-evaluate": job("abl-evaluate", "Succeeded")},
        previous=done(PREPARED, TRAINED),
        phase="Succeeded",
        reason="ReportWritten",
        progress="4/4",
        conditions=("True", "True", "True"),
    ),
    Case(
        "succeeded and every child gone stays Succeeded",
        {},
        previous=done(PREPARED, TRAINED, EVALUATED),
        phase="Succeeded",
        reason="ReportWritten",
        progress="4/4",
        conditions=("True", "True", "True"),
    ),
]


def _key(action) -> tuple[str, str]:
    return (type(action).__name__, action.name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan_ablation(case: Case) -> None:
    out = plan_ablation(case.ablation, case.jobs, case.pipelines, case.previous, now=NOW, owner=OWNER)
    assert [_key(a) for a in out.actions] == case.actions
    st = out.status
    assert (st.phase, st.reason, st.progress) == (case.phase, case.reason, case.progress)
    assert tuple(st.condition(k).status for k in (PREPARED, TRAINED, EVALUATED)) == case.conditions
    assert st.runs.total == 4
    assert (st.report is not None) == (case.phase == "Succeeded")
    assert (st.completion_time is not None) == (case.phase in ("Succeeded", "Failed"))


def test_the_data_pipeline_processes_each_corpus_on_the_specs_replicas_and_writes_under_prep() -> None:
    (create,) = plan_ablation(WITH_DATA, {}, {}, AblationStatus(), now=NOW, owner=OWNER).actions
    body = create.body
    assert body["metadata"]["ownerReferences"] == [OWNER]
    assert body["metadata"]["labels"] == {
        "team": "data",
        "zhinao.ai/ablation": "abl",
        "zhinao.ai/ablation-step": "data",
    }
    pipeline = pipeline_from_body(body)
    stages = {s.name: s for s in pipeline.spec.stages}
    assert list(stages) == ["base", "recipe-a"]  # b is a prepared dataset: nothing to process
    assert stages["base"].inputs == {"corpus": "s3://bucket/base"}
    assert stages["recipe-a"].inputs == {"corpus": "s3://bucket/raw"}
    assert stages["base"].output == "s3://bucket/abl-runs/abl/prep/base"
    assert stages["recipe-a"].output == "s3://bucket/abl-runs/abl/prep/recipes/a/data"
    assert not stages["recipe-a"].params.minhash.enabled  # the recipe's own data params
    jobs = [o for o in render_pipeline(pipeline) if o["kind"] == "PyTorchJob"]
    for j in jobs:
        validate_pytorchjob(j)
        assert j["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2  # dataJobs.replicas 3: Master + 2
    assert [j["metadata"]["name"] for j in jobs] == ["abl-data-base", "abl-data-recipe-a"]
    st = plan_ablation(
        WITH_DATA, {}, {"abl-data": run("abl-data", "Failed", "stage 'base' failed")}, AblationStatus(), now=NOW
    ).status
    assert st.message == "TrainingPipeline abl-data failed: stage 'base' failed"


def test_failures_name_what_failed() -> None:
    st = plan_ablation(
        ABLATION, {"abl-prepare": job("abl-prepare", "Failed", message="exit code 2")}, {}, AblationStatus(), now=NOW
    ).status
    assert st.message == "PyTorchJob abl-prepare failed: exit code 2"
    failed = {
        **runs("Succeeded", "Running", "Running", "Running"),
        "abl-b-s1": run("abl-b-s1", "Failed", "stage 'pretrain' failed after 1 attempt(s): OOMKilled"),
    }
    st = plan_ablation(ABLATION, PREPARE_OK, failed, AblationStatus(), now=NOW).status
    assert st.message == "run abl-b-s1 failed: stage 'pretrain' failed after 1 attempt(s): OOMKilled"
    assert (st.runs.succeeded, st.runs.failed) == (1, 1)
    assert st.condition(TRAINED).message == st.message


def test_deleting_the_failed_prepare_job_runs_it_again() -> None:
    failed = plan_ablation(ABLATION, {"abl-prepare": job("abl-prepare", "Failed")}, {}, AblationStatus(), now=T1).status
    again = plan_ablation(ABLATION, {}, {}, failed, now=NOW)
    assert [_key(a) for a in again.actions] == [("CreateJob", "abl-prepare")]
    assert again.status.phase == "Preparing" and again.status.completion_time is None


def test_succeeded_reports_the_report_uri() -> None:
    st = plan_ablation(
        ABLATION, {"abl-evaluate": job("abl-evaluate", "Succeeded")}, {}, done(PREPARED, TRAINED), now=NOW
    ).status
    assert st.report == "s3://bucket/abl-runs/abl/report/report.md"
    assert st.message == f"report: {st.report}"


def test_planning_again_after_the_creates_does_nothing_and_keeps_the_status() -> None:
    """Applying each plan's creates and planning again: no further action, identical status (no
    status write), whatever the step."""
    previous = AblationStatus()
    jobs: dict = {}
    pipelines: dict = {}
    for _ in range(3):
        first = plan_ablation(ABLATION, jobs, pipelines, previous, now=T1, owner=OWNER)
        for a in first.actions:
            (jobs if isinstance(a, CreateJob) else pipelines)[a.name] = a.body
        second = plan_ablation(ABLATION, jobs, pipelines, first.status, now=NOW, owner=OWNER)
        assert second.actions == ()
        assert second.status == first.status  # transition times kept: the clock moved, nothing else did
        # let the step finish: the next loop plans the step after it
        for name in list(jobs):
            jobs[name] = {**jobs[name], "status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}
        for name in list(pipelines):
            pipelines[name] = {**pipelines[name], "status": {"phase": "Succeeded"}}
        previous = second.status
    final = plan_ablation(ABLATION, jobs, pipelines, previous, now=NOW, owner=OWNER).status
    assert final.phase == "Succeeded"
    assert final.start_time == T1 and final.last_transition_time == NOW
    assert [c.last_transition_time for c in final.conditions] == [T1, T1, NOW]


def test_the_prepare_job_is_a_valid_pytorchjob_running_the_entry_point_with_the_whole_ablation() -> None:
    (create,) = plan_ablation(ABLATION, {}, {}, AblationStatus(), now=NOW, owner=OWNER).actions
    body = create.body
    validate_pytorchjob(body)
    assert body["metadata"]["name"] == "abl-prepare" and body["metadata"]["namespace"] == "team-a"
    assert body["metadata"]["ownerReferences"] == [OWNER]
    labels = body["metadata"]["labels"]
    assert labels["zhinao.ai/ablation"] == "abl" and labels["zhinao.ai/ablation-step"] == "prepare"
    assert LABEL_PIPELINE not in labels  # the TrainingPipeline controller does not take it for one of its jobs
    replicas = body["spec"]["pytorchReplicaSpecs"]  # dataJobs.replicas (default 4) ranks: Master + 3 Workers
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 3)
    container = replicas["Master"]["template"]["spec"]["containers"][0]
    assert [*container["command"], *container["args"]] == ["python", "-m", "zhinao_k8s.jobs.ablation_step", "prepare"]
    env = {e["name"]: e for e in container["env"]}
    assert Ablation.model_validate(json.loads(env[ENV_ABLATION_SPEC]["value"])) == ABLATION
    assert env["ZHINAO_S3_ENDPOINT"]["value"] == "http://minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_runs_are_the_planned_pipelines_owned_by_the_ablation() -> None:
    out = plan_ablation(ABLATION, PREPARE_OK, {}, AblationStatus(), now=NOW, owner=OWNER)
    bodies = {a.name: a.body for a in out.actions if isinstance(a, CreatePipeline)}
    for planned in expand_runs(ABLATION):
        body = bodies[planned.name]
        assert body["metadata"]["ownerReferences"] == [OWNER]
        assert body["metadata"]["labels"] == {
            "team": "data",
            "zhinao.ai/ablation": "abl",
            "zhinao.ai/recipe": planned.recipe,
            "zhinao.ai/seed": str(planned.index),
        }
        assert pipeline_from_body(body) == planned.pipeline  # what the TrainingPipeline controller will run


def test_ablation_from_body_drops_server_metadata() -> None:
    body = {
        **ablation_doc(),
        "metadata": {
            **ablation_doc()["metadata"],
            "uid": "u-1",
            "resourceVersion": "7",
            "managedFields": [{}],
            "finalizers": ["zhinao.ai/cleanup"],
        },
    }
    assert ablation_from_body(body) == ABLATION


@pytest.mark.parametrize("proxy_gpus,evaluate_gpus", [(8, "1"), (0, None)])
def test_evaluate_gets_one_gpu_when_the_proxy_trains_on_gpus_and_prepare_none(proxy_gpus, evaluate_gpus) -> None:
    doc = ablation_doc()
    doc["spec"]["proxy"]["gpu"] = proxy_gpus
    ablation = Ablation.model_validate(doc)
    done_prepare = done(PREPARED, TRAINED)
    jobs = {}
    for step, status in (("prepare", AblationStatus()), ("evaluate", done_prepare)):
        create = [a for a in plan_ablation(ablation, {}, {}, status, now=NOW).actions if isinstance(a, CreateJob)][0]
        validate_pytorchjob(create.body)
        jobs[step] = create.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
            "resources"
        ]
    assert "nvidia.com/gpu" not in jobs["prepare"].get("limits", {})
    assert jobs["evaluate"].get("limits", {}).get("nvidia.com/gpu") == evaluate_gpus
