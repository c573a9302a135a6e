"""(TrainingPipeline, stage) -> a kubeflow.org/v1 PyTorchJob, as a plain dict.

Every replica runs the same command, `torchrun ... -m zhinao`; what to do comes from the stage
spec file, a ConfigMap (`stage_configmap`) mounted into every pod, so the rendered ConfigMap and job
are complete and reproducible on their own. An init container waits until the inputs other stages
produce are there, so `render | kubectl apply -f -` runs the stages in order. The
training operator adds MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK/PET_* at pod creation; torchrun
reads PET_NNODES, PET_NODE_RANK and PET_NPROC_PER_NODE from there. `pod_template` and
`pytorchjob` also build an Ablation's prepare and evaluate jobs (render/ablation.py).
"""

import copy

from zhinao.config.runtime import ENV_METRICS_PORT, ENV_S3_ENDPOINT, ENV_STAGE_SPEC_FILE, StageRuntime
from zhinao_k8s.api.v1alpha1 import Resources, StageBase, Storage, TrainingPipeline
from zhinao_k8s.render.names import job_name, labels
from zhinao_k8s.render.scheduling import with_scheduling

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER_NAME = "pytorch"  # the training operator finds the rendezvous port on this container
RENDEZVOUS_PORT_NAME = "pytorchjob-port"
RENDEZVOUS_PORT = 23456
RUN_AS_USER = 1000
SCRATCH_DIR = "/scratch"
STAGE_SPEC_DIR = "/etc/zhinao"
STAGE_SPEC_KEY = "stage.json"
STAGE_SPEC_VOLUME = "stage-spec"
WAIT_CONTAINER_NAME = "wait-inputs"

TRAINER_COMMAND = ["torchrun"]
TRAINER_ARGS = [
    "--master-addr=$(MASTER_ADDR)",
    "--master-port=$(MASTER_PORT)",
    # Restarts are Kubernetes' (restartPolicy, counted against runPolicy.backoffLimit),
    # never torchrun's own: a rank torchrun restarted alone would wait in a rendezvous the
    # other pods never join again.
    "--max-restarts=0",
    "-m",
    "zhinao",
]


def stage_runtime(pipeline: TrainingPipeline, stage: StageBase, *, overwrite: bool = False) -> StageRuntime:
    return StageRuntime(
        pipeline=pipeline.metadata.name,
        stage=stage.name,
        kind=stage.kind,
        params=stage.params.to_wire(),
        inputs=pipeline.resolve_inputs(stage),
        upstream=sorted(k for k, uri in stage.inputs.items() if uri.startswith("stage://")),
        output=pipeline.output_of(stage),
        overwrite=overwrite,
    )


def stage_configmap_name(pipeline: TrainingPipeline, stage: StageBase) -> str:
    return f"{job_name(pipeline, stage)}-spec"


def stage_configmap(pipeline: TrainingPipeline, stage: StageBase, *, overwrite: bool = False) -> dict:
    """The stage spec every replica reads (ConfigMaps hold up to 1 MiB; one env var only 128 KiB)."""
    metadata = {"name": stage_configmap_name(pipeline, stage), "labels": labels(pipeline, stage)}
    if pipeline.metadata.namespace:
        metadata["namespace"] = pipeline.metadata.namespace
    data = {STAGE_SPEC_KEY: stage_runtime(pipeline, stage, overwrite=overwrite).to_json()}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def mount_stage_spec(template: dict, configmap: str) -> None:
    """Mount the stage spec ConfigMap into every container of `template` and point them at it."""
    pod = template["spec"]
    pod["volumes"].append({"name": STAGE_SPEC_VOLUME, "configMap": {"name": configmap}})
    for container in pod.get("initContainers", []) + pod["containers"]:
        container["volumeMounts"].append({"name": STAGE_SPEC_VOLUME, "mountPath": STAGE_SPEC_DIR, "readOnly": True})
        container["env"].insert(0, {"name": ENV_STAGE_SPEC_FILE, "value": f"{STAGE_SPEC_DIR}/{STAGE_SPEC_KEY}"})


def wait_inputs_container(trainer: dict, storage: Storage) -> dict:
    """Runs before the trainer: waits for the upstream stages' success markers (zhinao.wait_inputs)."""
    return {
        "name": WAIT_CONTAINER_NAME,
        "image": trainer["image"],
        "imagePullPolicy": trainer["imagePullPolicy"],
        "command": ["python", "-m", "zhinao.wait_inputs"],
        "env": [{"name": "HOME", "value": "/tmp"}, *storage_env(storage)],
        "resources": _resources(Resources(cpu="100m", memory="256Mi")),
        "securityContext": copy.deepcopy(trainer["securityContext"]),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def scratch_env() -> list[dict]:
    """Where a process may write: the pod's root filesystem is read-only."""
    return [{"name": "ZHINAO_WORKDIR", "value": SCRATCH_DIR}, {"name": "HOME", "value": "/tmp"}]


def storage_env(storage: Storage) -> list[dict]:
    """What `zhinao.storage.open_store` reads: endpoint, region and Secret-referenced credentials."""
    env = []
    if storage.endpoint:
        env.append({"name": ENV_S3_ENDPOINT, "value": storage.endpoint})
    if storage.region:
        env.append({"name": "AWS_REGION", "value": storage.region})
    if storage.credentials:
        ref = storage.credentials.secret_ref
        for var, key in (
            ("AWS_ACCESS_KEY_ID", ref.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", ref.secret_access_key_key),
        ):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}})
    return env


def _env(pipeline: TrainingPipeline, stage: StageBase) -> list[dict]:
    spec = pipeline.spec
    env = scratch_env()
    if spec.metrics.enabled:
        env.append({"name": ENV_METRICS_PORT, "value": str(spec.metrics.port)})
    return env + storage_env(spec.storage)


def _resources(resources: Resources) -> dict:
    amounts = {"cpu": resources.cpu, "memory": resources.memory}
    if resources.gpu:
        amounts["nvidia.com/gpu"] = str(resources.gpu)
    # requests == limits: Guaranteed QoS, so training pods are the last to be evicted.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def pod_template(
    *,
    image: str,
    pull_policy: str,
    command: list[str],
    args: list[str],
    env: list[dict],
    resources: Resources,
    labels: dict[str, str],
    metrics_port: int | None,
) -> dict:
    """The pod every replica runs: restricted security context, scratch volumes, Guaranteed QoS;
    `metrics_port` None: the process serves no /metrics."""
    ports = [{"name": RENDEZVOUS_PORT_NAME, "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
    annotations = {}
    if metrics_port is not None:
        ports.append({"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"})
        annotations = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(metrics_port),
            "prometheus.io/path": "/metrics",
        }
    container = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": list(command),
        "args": list(args),
        "env": env,
        "ports": ports,
        "resources": _resources(resources),
        # The trainer writes its failure reason there; torchrun's own failures leave the log's tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
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
        "metadata": {"labels": dict(labels), "annotations": annotations},
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


def pytorchjob(
    *,
    name: str,
    namespace: str | None,
    labels: dict[str, str],
    template: dict,
    replicas: int = 1,
    nproc_per_node: int = 1,
    backoff_limit: int,
    restart_policy: str = "OnFailure",
) -> dict:
    """A PyTorchJob of one Master plus replicas-1 Workers, all running `template`."""
    replica_specs = {"Master": {"replicas": 1, "restartPolicy": restart_policy, "template": template}}
    if replicas > 1:
        replica_specs["Worker"] = {
            "replicas": replicas - 1,
            "restartPolicy": restart_policy,
            "template": copy.deepcopy(template),
        }
    metadata = {"name": name, "labels": dict(labels)}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "nprocPerNode": str(nproc_per_node),
            "runPolicy": {
                "backoffLimit": backoff_limit,
                # Keep finished pods for `kubectl logs`; delete only those still running at the end.
                "cleanPodPolicy": "Running",
            },
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def render_pytorchjob(pipeline: TrainingPipeline, stage: StageBase) -> dict:
    spec = pipeline.spec
    template = pod_template(
        image=stage.image or spec.image,
        pull_policy=spec.image_pull_policy,
        command=TRAINER_COMMAND,
        args=TRAINER_ARGS,
        env=_env(pipeline, stage),
        resources=stage.resources,
        labels=labels(pipeline, stage),
        metrics_port=spec.metrics.port if spec.metrics.enabled else None,
    )
    if any(uri.startswith("stage://") for uri in stage.inputs.values()):
        template["spec"]["initContainers"] = [wait_inputs_container(template["spec"]["containers"][0], spec.storage)]
    mount_stage_spec(template, stage_configmap_name(pipeline, stage))
    job = pytorchjob(
        name=job_name(pipeline, stage),
        namespace=pipeline.metadata.namespace,
        labels=labels(pipeline, stage),
        template=template,
        replicas=stage.replicas,
        nproc_per_node=stage.nproc_per_node,
        backoff_limit=stage.backoff_limit,
        restart_policy=stage.restart_policy,
    )
    return with_scheduling(job, pipeline.scheduling_of(stage))


def render_stage(pipeline: TrainingPipeline, stage: StageBase, *, overwrite: bool = False) -> list[dict]:
    """What one stage needs on a cluster: its stage spec ConfigMap, then its PyTorchJob.
    `overwrite`: the stage may replace an output a different run wrote."""
    return [stage_configmap(pipeline, stage, overwrite=overwrite), render_pytorchjob(pipeline, stage)]


def render_pipeline(pipeline: TrainingPipeline, only: list[str] | None = None) -> list[dict]:
    """Every stage's ConfigMap and PyTorchJob, in run order; `only`: just these stages."""
    stages = [s for s in pipeline.spec.stages if not only or s.name in only]
    return [obj for stage in stages for obj in render_stage(pipeline, stage)]
