"""(TrainingPipeline, stage) -> a kubeflow.org/v1 PyTorchJob, as a plain dict.

Every replica runs the same command, `torchrun ... -m zhinao`; what to do comes from the
ZHINAO_STAGE_SPEC env var, so a rendered job is complete and reproducible on its own. The
training operator adds MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK/PET_* at pod creation; torchrun
reads PET_NNODES, PET_NODE_RANK and PET_NPROC_PER_NODE from there.
"""

import copy

from zhinao.config.runtime import ENV_METRICS_PORT, ENV_S3_ENDPOINT, ENV_STAGE_SPEC, StageRuntime
from zhinao_k8s.api.v1alpha1 import StageBase, TrainingPipeline
from zhinao_k8s.render.names import job_name, labels

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER_NAME = "pytorch"  # the training operator finds the rendezvous port on this container
RENDEZVOUS_PORT_NAME = "pytorchjob-port"
RENDEZVOUS_PORT = 23456
RUN_AS_USER = 1000
SCRATCH_DIR = "/scratch"

TRAINER_COMMAND = ["torchrun"]
TRAINER_ARGS = [
    "--master-addr=$(MASTER_ADDR)",
    "--master-port=$(MASTER_PORT)",
    # The PyTorchJob restarts the whole job (backoffLimit); a local torchrun restart would
    # leave the other pods waiting in a rendezvous that never completes.
    "--max-restarts=0",
    "-m",
    "zhinao",
]


def stage_runtime(pipeline: TrainingPipeline, stage: StageBase) -> StageRuntime:
    return StageRuntime(
        pipeline=pipeline.metadata.name,
        stage=stage.name,
        kind=stage.kind,
        params=stage.params.to_wire(),
        inputs=pipeline.resolve_inputs(stage),
        output=pipeline.output_of(stage),
    )


def _env(pipeline: TrainingPipeline, stage: StageBase) -> list[dict]:
    spec = pipeline.spec
    env = [
        {"name": ENV_STAGE_SPEC, "value": stage_runtime(pipeline, stage).to_env()},
        {"name": "ZHINAO_WORKDIR", "value": SCRATCH_DIR},
        {"name": "HOME", "value": "/tmp"},
    ]
    if spec.metrics.enabled:
        env.append({"name": ENV_METRICS_PORT, "value": str(spec.metrics.port)})
    if spec.storage.endpoint:
        env.append({"name": ENV_S3_ENDPOINT, "value": spec.storage.endpoint})
    if spec.storage.region:
        env.append({"name": "AWS_REGION", "value": spec.storage.region})
    if spec.storage.credentials:
        ref = spec.storage.credentials.secret_ref
        for var, key in (("AWS_ACCESS_KEY_ID", ref.access_key_id_key), ("AWS_SECRET_ACCESS_KEY", ref.secret_access_key_key)):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}})
    return env


def _resources(stage: StageBase) -> dict:
    amounts = {"cpu": stage.resources.cpu, "memory": stage.resources.memory}
    if stage.resources.gpu:
        amounts["nvidia.com/gpu"] = str(stage.resources.gpu)
    # requests == limits: Guaranteed QoS, so training pods are the last to be evicted.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_template(pipeline: TrainingPipeline, stage: StageBase) -> dict:
    spec = pipeline.spec
    ports = [{"name": RENDEZVOUS_PORT_NAME, "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
    annotations = {}
    if spec.metrics.enabled:
        ports.append({"name": "metrics", "containerPort": spec.metrics.port, "protocol": "TCP"})
        annotations = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(spec.metrics.port),
            "prometheus.io/path": "/metrics",
        }
    container = {
        "name": CONTAINER_NAME,
        "image": stage.image or spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": list(TRAINER_COMMAND),
        "args": list(TRAINER_ARGS),
        "env": _env(pipeline, stage),
        "ports": ports,
        "resources": _resources(stage),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "scratch", "mountPath": SCRATCH_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    return {
        "metadata": {"labels": labels(pipeline, stage), "annotations": annotations},
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS_USER,
                "runAsGroup": RUN_AS_USER,
                "fsGroup": RUN_AS_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
                # NCCL and dataloader workers need more shared memory than the 64Mi default.
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }


def render_pytorchjob(pipeline: TrainingPipeline, stage: StageBase) -> dict:
    template = _pod_template(pipeline, stage)
    replica_specs = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if stage.replicas > 1:
        replica_specs["Worker"] = {
            "replicas": stage.replicas - 1,
            "restartPolicy": "OnFailure",
            "template": copy.deepcopy(template),
        }
    metadata = {"name": job_name(pipeline, stage), "labels": labels(pipeline, stage)}
    if pipeline.metadata.namespace:
        metadata["namespace"] = pipeline.metadata.namespace
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "nprocPerNode": str(stage.nproc_per_node),
            "runPolicy": {
                "backoffLimit": stage.backoff_limit,
                # Keep finished pods for `kubectl logs`; delete only those still running at the end.
                "cleanPodPolicy": "Running",
            },
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def render_pipeline(pipeline: TrainingPipeline) -> list[dict]:
    """One PyTorchJob per stage, in run order."""
    return [render_pytorchjob(pipeline, stage) for stage in pipeline.spec.stages]
