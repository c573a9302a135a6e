"""(Ablation, step) -> the PyTorchJob of its `prepare` or `evaluate` step, as a plain dict.

Every replica in the trainer image runs `python -m zhinao_k8s.jobs.ablation_step <step>`, one rank
per pod; the whole Ablation document travels in the ZHINAO_ABLATION_SPEC env var, so the job needs
nothing else. `prepare` has `dataJobs.replicas` pods (Master + Workers, a gloo group from the
operator's RANK/WORLD_SIZE/MASTER_ADDR), like the data stages before it; `evaluate` one. The pod is
the training pods' own (security context, scratch volumes, storage credentials by secretKeyRef),
with the proxy's CPU and memory. `prepare` is CPU work; `evaluate` gets one GPU when
the proxy trains on GPUs (the benchmarks on a 1.8b proxy are slow on CPU), none for a CPU proxy.
The data stages before `prepare` are a TrainingPipeline of their own (ablation_runs.data_pipeline).
"""

import json
from typing import Literal

from zhinao_k8s.api.ablation import Ablation
from zhinao_k8s.api.v1alpha1 import Resources
from zhinao_k8s.render.names import LABEL_ABLATION, LABEL_ABLATION_STEP, app_labels
from zhinao_k8s.render.pytorchjob import pod_template, pytorchjob, scratch_env, storage_env

Step = Literal["prepare", "evaluate"]
STEPS: tuple[Step, ...] = ("prepare", "evaluate")
ENV_ABLATION_SPEC = "ZHINAO_ABLATION_SPEC"
JOB_MODULE = "zhinao_k8s.jobs.ablation_step"
BACKOFF_LIMIT = 2
"""The step job's `runPolicy.backoffLimit` (restarts before it is Failed): both steps resume what an
earlier attempt wrote."""


def step_job_name(ablation: Ablation, step: Step) -> str:
    """`<ablation>-<step>`: at most 40 + 9 characters, a valid DNS label."""
    return f"{ablation.metadata.name}-{step}"


def step_labels(ablation: Ablation, step: Step) -> dict[str, str]:
    return {**app_labels(f"ablation-{step}"), LABEL_ABLATION: ablation.metadata.name, LABEL_ABLATION_STEP: step}


def step_gpus(ablation: Ablation, step: Step) -> int:
    return min(ablation.spec.proxy.gpu, 1) if step == "evaluate" else 0


def step_replicas(ablation: Ablation, step: Step) -> int:
    return ablation.spec.data_jobs.replicas if step == "prepare" else 1


def render_step_job(ablation: Ablation, step: Step) -> dict:
    spec = ablation.spec
    env = [
        {"name": ENV_ABLATION_SPEC, "value": json.dumps(ablation.to_wire(), sort_keys=True, separators=(",", ":"))},
        *scratch_env(),
        *storage_env(spec.storage),
    ]
    labels = step_labels(ablation, step)
    template = pod_template(
        image=spec.image,
        pull_policy=spec.image_pull_policy,
        command=["python"],
        args=["-m", JOB_MODULE, step],
        env=env,
        resources=Resources(cpu=spec.proxy.cpu, memory=spec.proxy.memory, gpu=step_gpus(ablation, step)),
        labels=labels,
        metrics_port=None,
    )
    return pytorchjob(
        name=step_job_name(ablation, step),
        namespace=ablation.metadata.namespace,
        labels=labels,
        template=template,
        replicas=step_replicas(ablation, step),
        backoff_limit=BACKOFF_LIMIT,
    )
