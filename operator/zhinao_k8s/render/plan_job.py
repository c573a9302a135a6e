"""(TrainingPipeline, stage) -> the batch/v1 Job that plans the stage's GPU memory before it runs.

The operator image has no torch, and a fake-tensor plan of a 7B step takes tens of seconds of CPU,
so the plan runs in the trainer image as a short CPU-only Job: `python -m zhinao_k8s.jobs.plan_stage
<stage>` with the whole pipeline in ZHINAO_PLAN_PIPELINE (a longctx or SFT stage's model shape is
traced to the pretrain stage it descends from). Its verdict is the container's termination message
(`PlanResult`); the operator reads it (controller/fit_gate.py). Pure: no I/O.

The Job carries `plan_hash`, a digest of everything the plan reads (the image and the stages of the
model's lineage): a Job of the current hash is a cached verdict, so an operator restart or a retry
of the stage does not plan again; one of another hash is stale and is replaced.
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

from zhinao_k8s.api.v1alpha1 import Resources, StageBase, TrainingPipeline
from zhinao_k8s.render.names import app_labels, job_name, labels
from zhinao_k8s.render.pytorchjob import pod_template, scratch_env

PLAN_MODULE = "zhinao_k8s.jobs.plan_stage"
ENV_PLAN_PIPELINE = "ZHINAO_PLAN_PIPELINE"
ANNOTATION_PLAN_HASH = "zhinao.ai/plan-hash"
COMPONENT = "memory-plan"
PLAN_RESOURCES = Resources(cpu="1", memory="2Gi")
"""A fake-tensor plan allocates no tensor data: the 7B example's plan (operator/zhinao_k8s/examples/
pretrain-7b.yaml, FSDP2 on 8 ranks) peaked at 450 MB resident and 37 s of CPU time, measured by
`/usr/bin/time -v` on this module (Dec 2026, shared 2-core x86_64)."""
ACTIVE_DEADLINE_SECONDS = 1800
"""A plan takes seconds to a few minutes; one stuck (an image that never pulls) fails instead of blocking."""

Verdict = Literal["fits", "refused", "skipped"]


@dataclass(frozen=True)
class PlanResult:
    """What the plan Job reports in its termination message (at most 4096 bytes, JSON)."""

    stage: str
    verdict: Verdict
    """fits: start the stage; refused: the stage cannot fit its GPUs; skipped: not plannable (run it)."""
    message: str
    """One line: the refusal with its numbers, the peak against the GPU, or why it was not planned."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "PlanResult | None":
        """None for anything that is not a result (a crash leaves the log's tail instead)."""
        try:
            raw = json.loads(text or "")
            result = cls(stage=raw["stage"], verdict=raw["verdict"], message=raw["message"])
        except (ValueError, TypeError, KeyError):
            return None
        return result if result.verdict in ("fits", "refused", "skipped") else None


def plan_job_name(pipeline: TrainingPipeline, stage: StageBase) -> str:
    """`<pipeline>-<stage>-plan`: the stage's job name is at most 54 characters (its `-master-0`
    Service fits 63), so this one fits 63 too."""
    return f"{job_name(pipeline, stage)}-plan"


def needs_plan(pipeline: TrainingPipeline, stage: StageBase) -> bool:
    return pipeline.spec.memory_plan and stage.resources.gpu > 0


def plan_hash(pipeline: TrainingPipeline, stage: StageBase) -> str:
    """A digest of what the plan of `stage` reads: the image, the stages of its model's lineage and
    the tokenizer stage that sizes the vocabulary."""
    lineage = pipeline.model_lineage(stage)
    tokenizer = pipeline.source(lineage[-1], "tokenizer")
    subject = {
        "image": stage.image or pipeline.spec.image,
        "stages": [s.to_wire() for s in lineage + ([tokenizer] if tokenizer is not None else [])],
    }
    return hashlib.sha256(json.dumps(subject, sort_keys=True).encode()).hexdigest()[:16]


def plan_labels(pipeline: TrainingPipeline, stage: StageBase) -> dict[str, str]:
    return {**labels(pipeline, stage), **app_labels(COMPONENT)}


def render_plan_job(pipeline: TrainingPipeline, stage: StageBase) -> dict:
    spec = pipeline.spec
    scheduling = pipeline.scheduling_of(stage)
    env = [
        {"name": ENV_PLAN_PIPELINE, "value": json.dumps(pipeline.to_wire(), sort_keys=True, separators=(",", ":"))},
        *scratch_env(),
    ]
    template = pod_template(
        image=stage.image or spec.image,
        pull_policy=spec.image_pull_policy,
        command=["python"],
        args=["-m", PLAN_MODULE, stage.name],
        env=env,
        resources=PLAN_RESOURCES,
        labels=plan_labels(pipeline, stage),
        metrics_port=None,
    )
    pod = template["spec"]
    del pod["containers"][0]["ports"]  # no rendezvous: one process, no peers
    pod["restartPolicy"] = "Never"
    # The trainer image may be private and its ServiceAccount the only one allowed to run it; node
    # pools and tolerations stay the stage's own (they place GPU pods; this one needs none).
    if scheduling.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in scheduling.image_pull_secrets]
    if scheduling.service_account_name:
        pod["serviceAccountName"] = scheduling.service_account_name
    metadata = {
        "name": plan_job_name(pipeline, stage),
        "labels": plan_labels(pipeline, stage),
        "annotations": {ANNOTATION_PLAN_HASH: plan_hash(pipeline, stage)},
    }
    if pipeline.metadata.namespace:
        metadata["namespace"] = pipeline.metadata.namespace
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        # backoffLimit 0: the plan is deterministic, a second try would say the same.
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS, "template": template},
    }
