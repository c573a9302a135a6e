"""Run every stage of a TrainingPipeline in order through the local PyTorchJob runner.

`run_training_pipeline`, not `run_pipeline`: in this package "pipeline" always means a TrainingPipeline,
but zhinao.data has a pipeline of its own."""

from dataclasses import dataclass, field
from pathlib import Path

from zhinao_k8s.api.v1alpha1 import TrainingPipeline
from zhinao_k8s.render.pytorchjob import render_stage
from zhinao_k8s.runner.local import CRASH_BACKOFF_SECONDS, JobResult, Listener, LocalJobRunner


@dataclass
class PipelineResult:
    name: str
    stages: list[tuple[str, JobResult]] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return bool(self.stages) and all(r.succeeded for _, r in self.stages)


def run_training_pipeline(
    pipeline: TrainingPipeline,
    *,
    workdir: Path,
    secrets: dict[str, dict[str, str]] | None = None,
    listener: Listener | None = None,
    only: list[str] | None = None,
    echo_logs: bool = False,
    crash_backoff: tuple[float, float] = CRASH_BACKOFF_SECONDS,
    overwrite: list[str] | None = None,
) -> PipelineResult:
    """Stops at the first stage that fails, as the operator does once retries are exhausted."""
    result = PipelineResult(pipeline.metadata.name)
    notify = listener or (lambda event, data: None)
    for stage in pipeline.spec.stages:
        if only and stage.name not in only:
            continue
        configmap, job = render_stage(pipeline, stage, overwrite=stage.name in (overwrite or []))
        notify("stage", {"stage": stage.name, "kind": stage.kind, "job": job["metadata"]["name"]})
        runner = LocalJobRunner(
            job,
            workdir=workdir,
            configmaps={configmap["metadata"]["name"]: configmap["data"]},
            secrets=secrets,
            listener=listener,
            echo_logs=echo_logs,
            crash_backoff=crash_backoff,
        )
        job_result = runner.run()
        result.stages.append((stage.name, job_result))
        if not job_result.succeeded:
            break
    return result
