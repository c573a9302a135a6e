"""Where and how a stage's pods are scheduled on a GPU cluster: node pools, queues, gang scheduling,
registry and cloud identity, and the fabric of multi-node jobs.

`spec.scheduling` sets pipeline-wide defaults; a stage's `scheduling` overrides them field by field
(a field the stage sets replaces the pipeline's value whole, so a stage can also clear a list by
setting it empty). Every field maps onto one field of the PyTorchJob or its pod template
(render/scheduling.py), so what the Kubeflow and Kubernetes docs say about it applies unchanged.
"""

from typing import Any, Literal

from pydantic import Field, field_validator

from zhinao.config._base import SpecModel

# Kueue admits a job into the LocalQueue named by this label (and suspends it until then).
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class Toleration(SpecModel):
    """A Kubernetes toleration, for example of the `nvidia.com/gpu:NoSchedule` taint on GPU nodes."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Unset tolerates every effect of the taint."""

    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""


class SchedulingPolicy(SpecModel):
    """`runPolicy.schedulingPolicy` of the PyTorchJob: gang scheduling through Volcano or the
    scheduler-plugins coscheduler, which place all pods of the job at once or none."""

    min_available: int | None = Field(default=None, ge=1)
    """Pods that must be placeable together; unset: all of the job's pods."""

    queue: str | None = None
    """Volcano queue the PodGroup joins (immutable once the job exists)."""

    priority_class: str | None = None
    """PriorityClass of the PodGroup."""

    schedule_timeout_seconds: int | None = Field(default=None, ge=1)
    """How long the gang may wait for room before the scheduler gives up (scheduler-plugins)."""


class Rdma(SpecModel):
    """RDMA / InfiniBand for multi-node NCCL: a device-plugin resource per pod and the IPC_LOCK
    capability that RDMA needs to pin memory (which Pod Security `restricted` forbids: run such
    stages in a namespace at `baseline`)."""

    resource: str = "rdma/rdma_shared_device_a"
    """Extended resource the RDMA device plugin advertises (this default: Mellanox's shared-device
    plugin; NVIDIA Network Operator setups often use `nvidia.com/hostdev` or `rdma/ib`)."""

    count: int = Field(default=1, ge=1, le=64)
    """Units of `resource` per pod (requests == limits)."""


class Scheduling(SpecModel):
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels a pod requires, for example a GPU node pool (`cloud.google.com/gke-accelerator: nvidia-h100-80gb`)."""

    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints the pods tolerate; GPU node pools are commonly tainted `nvidia.com/gpu=present:NoSchedule`."""

    affinity: dict[str, Any] | None = None
    """A Kubernetes `Affinity` (nodeAffinity, podAffinity, podAntiAffinity), copied into the pod as written."""

    priority_class_name: str | None = Field(default=None, pattern=NAME)
    """PriorityClass of the pods (preemption order among training jobs)."""

    image_pull_secrets: list[str] = Field(default_factory=list)
    """Names of `kubernetes.io/dockerconfigjson` Secrets for a private registry."""

    service_account_name: str | None = Field(default=None, pattern=NAME)
    """ServiceAccount of the pods. Bound to a cloud identity (IRSA on EKS, Workload Identity on GKE,
    AKS workload identity) it lets S3 access work without `storage.credentials`."""

    scheduling_policy: SchedulingPolicy | None = None
    """Gang scheduling (Volcano / scheduler-plugins); see SchedulingPolicy."""

    queue_name: str | None = Field(default=None, pattern=NAME)
    """Kueue LocalQueue: sets the `kueue.x-k8s.io/queue-name` label; Kueue then holds the job
    suspended until the queue's quota admits it (the operator leaves that suspension alone)."""

    managed_by: Literal["kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue"] | None = None
    """`runPolicy.managedBy`: `kueue.x-k8s.io/multikueue` lets MultiKueue run the job on a worker
    cluster; unset is the training operator."""

    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """`runPolicy.ttlSecondsAfterFinished`: delete the finished job (and its pods) after this long.
    The pipeline keeps the stage's status; `kubectl logs` is gone with the pods."""

    rdma: Rdma | None = None
    """RDMA / InfiniBand devices for multi-node jobs; see Rdma."""

    nccl_env: dict[str, str] = Field(default_factory=dict)
    """NCCL settings of the training container, for example `NCCL_IB_HCA: mlx5`,
    `NCCL_SOCKET_IFNAME: eth0`, `NCCL_DEBUG: WARN`. Only `NCCL_*` names."""

    @field_validator("nccl_env")
    @classmethod
    def _nccl_only(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not k.startswith("NCCL_") or not k.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"{', '.join(bad)}: only NCCL_* variable names are allowed")
        return v


def effective_scheduling(pipeline_wide: Scheduling, stage: Scheduling | None) -> Scheduling:
    """The stage's scheduling: the pipeline's, with each field the stage sets replacing it."""
    if stage is None:
        return pipeline_wide
    return pipeline_wide.model_copy(update={f: getattr(stage, f) for f in stage.model_fields_set})
