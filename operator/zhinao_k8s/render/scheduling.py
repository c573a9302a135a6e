"""Scheduling (api/scheduling.py) onto a rendered PyTorchJob: pod placement and identity into every
replica's pod template, gang scheduling, Kueue and lifetime into the job. Pure: dict in, dict out."""

import copy

from zhinao_k8s.api.scheduling import KUEUE_QUEUE_LABEL, Scheduling

# RDMA pins memory for the NIC: the container needs this capability (and nothing else added).
RDMA_CAPABILITY = "IPC_LOCK"


def _pod_spec(spec: dict, s: Scheduling) -> None:
    if s.node_selector:
        spec["nodeSelector"] = dict(s.node_selector)
    if s.tolerations:
        spec["tolerations"] = [t.to_wire() for t in s.tolerations]
    if s.affinity:
        spec["affinity"] = copy.deepcopy(s.affinity)
    if s.priority_class_name:
        spec["priorityClassName"] = s.priority_class_name
    if s.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in s.image_pull_secrets]
    if s.service_account_name:
        spec["serviceAccountName"] = s.service_account_name
    for container in spec["containers"]:
        container["env"] += [{"name": k, "value": v} for k, v in sorted(s.nccl_env.items())]
        if s.rdma:
            for part in ("requests", "limits"):
                container["resources"][part][s.rdma.resource] = str(s.rdma.count)
            container["securityContext"]["capabilities"]["add"] = [RDMA_CAPABILITY]


def with_scheduling(job: dict, s: Scheduling) -> dict:
    """A copy of `job` scheduled as `s` says; an empty Scheduling changes nothing."""
    job = copy.deepcopy(job)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        _pod_spec(replica["template"]["spec"], s)
    run_policy = job["spec"]["runPolicy"]
    if s.queue_name:
        job["metadata"]["labels"][KUEUE_QUEUE_LABEL] = s.queue_name
        # Created suspended, so no pod starts before Kueue admits the job (with or without its
        # webhook); Kueue resumes it, and the operator never does (controller/plan_pipeline.py).
        run_policy["suspend"] = True
    if s.scheduling_policy:
        run_policy["schedulingPolicy"] = s.scheduling_policy.to_wire()
    if s.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = s.ttl_seconds_after_finished
    if s.managed_by:
        run_policy["managedBy"] = s.managed_by
    return job
