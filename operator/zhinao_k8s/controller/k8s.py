"""The only module that talks to the Kubernetes API (the operator's handlers and the CLI both use it).

Thin on purpose: each method is one API call with the error handling that makes it idempotent
(create-if-absent, delete-if-present). The decisions are in `plan_pipeline.py` and `plan_ablation.py`.
"""

import os
from collections.abc import Iterable

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from zhinao_k8s.api.crd import ABLATION_PLURAL, PLURAL
from zhinao_k8s.api.v1alpha1 import GROUP, VERSION
from zhinao_k8s.controller.fit_gate import CreatePlanJob, DeletePlanJob
from zhinao_k8s.controller.plan_ablation import AblationAction, CreatePipeline
from zhinao_k8s.controller.plan_pipeline import ANNOTATION_SUSPENDED, Action, CreateJob, DeleteJob, SuspendJob
from zhinao_k8s.render.names import LABEL_ABLATION, LABEL_PIPELINE

JOB_GROUP, JOB_VERSION, JOB_PLURAL = "kubeflow.org", "v1", "pytorchjobs"
PLAN_JOB_GROUP, PLAN_JOB_VERSION, PLAN_JOB_PLURAL = "batch", "v1", "jobs"
# Labels the training operator puts on the pods of a PyTorchJob.
POD_JOB_LABEL = "training.kubeflow.org/job-name"
POD_ROLE_LABEL = "training.kubeflow.org/replica-type"
# The label the Job controller puts on a batch/v1 Job's pods (Kubernetes 1.27+).
POD_BATCH_JOB_LABEL = "batch.kubernetes.io/job-name"


POOL_MAXSIZE = 32
"""HTTP connections kept per API server: at least the operator's handler threads (operator.py,
max_workers=16), else urllib3 drops a connection after each overlapping call ("Connection pool is
full, discarding connection") and the next call opens a new one."""


def load_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """In-cluster credentials inside a pod, else the kubeconfig file (KUBECONFIG, ~/.kube/config)."""
    cfg = client.Configuration()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, POOL_MAXSIZE)
    return client.ApiClient(cfg)


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the current kubeconfig context (or the pod's own namespace), else `default`."""
    in_pod = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if kubeconfig is None and context is None and os.path.exists(in_pod):
        with open(in_pod, encoding="utf-8") as f:
            return f.read().strip()
    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        if context:
            contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
            active = next((c for c in contexts if c["name"] == context), active)
        return (active or {}).get("context", {}).get("namespace") or "default"
    except (config.ConfigException, OSError, TypeError):
        return "default"


def _absent(exc: ApiException) -> bool:
    return exc.status == 404


class Cluster:
    def __init__(self, api_client: client.ApiClient | None = None):
        self.api_client = api_client or client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)

    def _list_labelled(
        self, group: str, version: str, plural: str, namespace: str, label: str, value: str
    ) -> dict[str, dict]:
        """Objects carrying `label=value`, by name."""
        out = self.custom.list_namespaced_custom_object(
            group, version, namespace, plural, label_selector=f"{label}={value}"
        )
        return {
            o["metadata"]["name"]: o
            for o in out.get("items", [])
            if (o["metadata"].get("labels") or {}).get(label) == value  # selector, re-checked
        }

    def _create_absent(self, group: str, version: str, plural: str, namespace: str, body: dict) -> bool:
        """Create unless one of that name exists; True when this call created it."""
        try:
            self.custom.create_namespaced_custom_object(group, version, namespace, plural, body)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    # -- PyTorchJobs ----------------------------------------------------------------------------

    def list_jobs(self, namespace: str, pipeline: str) -> dict[str, dict]:
        """The pipeline's PyTorchJobs by name (found by label, so only its own)."""
        return self._list_labelled(JOB_GROUP, JOB_VERSION, JOB_PLURAL, namespace, LABEL_PIPELINE, pipeline)

    def list_ablation_jobs(self, namespace: str, ablation: str) -> dict[str, dict]:
        """The ablation's own PyTorchJobs (prepare, evaluate) by name; its runs' jobs carry no such label."""
        return self._list_labelled(JOB_GROUP, JOB_VERSION, JOB_PLURAL, namespace, LABEL_ABLATION, ablation)

    def create_job(self, namespace: str, body: dict) -> bool:
        return self._create_absent(JOB_GROUP, JOB_VERSION, JOB_PLURAL, namespace, body)

    def put_configmap(self, namespace: str, body: dict) -> None:
        """Create, or update the data of one of that name (a retry after the spec's params changed)."""
        try:
            self.core.create_namespaced_config_map(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_namespaced_config_map(body["metadata"]["name"], namespace, {"data": body["data"]})

    def delete_job(self, namespace: str, name: str) -> bool:
        """Foreground: the job stays (with a deletionTimestamp) until the garbage collector has
        removed its pods and Services, so a retry of the same name never meets them."""
        try:
            self.custom.delete_namespaced_custom_object(
                JOB_GROUP,
                JOB_VERSION,
                namespace,
                JOB_PLURAL,
                name,
                propagation_policy="Foreground",
            )
            return True
        except ApiException as exc:
            if _absent(exc):
                return False
            raise

    def suspend_job(self, namespace: str, name: str, suspend: bool) -> None:
        """Set `runPolicy.suspend`, and mark (or unmark) the suspension as the pipeline's own."""
        self.custom.patch_namespaced_custom_object(
            JOB_GROUP,
            JOB_VERSION,
            namespace,
            JOB_PLURAL,
            name,
            {
                "metadata": {"annotations": {ANNOTATION_SUSPENDED: "true" if suspend else None}},
                "spec": {"runPolicy": {"suspend": suspend}},
            },
        )

    # -- memory plan Jobs (batch/v1) --------------------------------------------------------------

    def list_plan_jobs(self, namespace: str, pipeline: str) -> dict[str, dict]:
        """The pipeline's memory plan Jobs by name (found by label, so only its own)."""
        out = self.batch.list_namespaced_job(namespace, label_selector=f"{LABEL_PIPELINE}={pipeline}")
        jobs = (self.api_client.sanitize_for_serialization(j) for j in out.items)
        return {
            j["metadata"]["name"]: j
            for j in jobs
            if (j["metadata"].get("labels") or {}).get(LABEL_PIPELINE) == pipeline
        }

    def termination_message(self, namespace: str, job: str) -> str | None:
        """The termination message of the finished container of a Job's pod (backoffLimit 0: one pod), if any."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"{POD_BATCH_JOB_LABEL}={job}")
        for pod in pods.items:
            for status in (pod.status and pod.status.container_statuses) or []:
                terminated = status.state and status.state.terminated
                if terminated is not None and terminated.message:
                    return terminated.message
        return None

    def create_plan_job(self, namespace: str, body: dict) -> bool:
        try:
            self.batch.create_namespaced_job(namespace, body)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def delete_plan_job(self, namespace: str, name: str) -> bool:
        """Background: the Job goes at once and its pod after it (the API's default would orphan the pod)."""
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
            return True
        except ApiException as exc:
            if _absent(exc):
                return False
            raise

    def apply(self, namespace: str, actions: Iterable[Action | AblationAction]) -> list[str]:
        """Carry out a plan's actions in order; returns one line per action for the log."""
        done = []
        for action in actions:
            if isinstance(action, CreateJob):
                if action.configmap is not None:
                    self.put_configmap(namespace, action.configmap)
                created = self.create_job(namespace, action.body)
                done.append(f"{'created' if created else 'already exists:'} PyTorchJob {action.name}")
            elif isinstance(action, DeleteJob):
                self.delete_job(namespace, action.name)
                done.append(f"deleted PyTorchJob {action.name} ({action.reason})")
            elif isinstance(action, SuspendJob):
                self.suspend_job(namespace, action.name, action.suspend)
                done.append(f"{'suspended' if action.suspend else 'resumed'} PyTorchJob {action.name}")
            elif isinstance(action, CreatePlanJob):
                created = self.create_plan_job(namespace, action.body)
                done.append(f"{'created' if created else 'already exists:'} memory plan Job {action.name}")
            elif isinstance(action, DeletePlanJob):
                self.delete_plan_job(namespace, action.name)
                done.append(f"deleted memory plan Job {action.name} ({action.reason})")
            elif isinstance(action, CreatePipeline):
                created = self._create_absent(GROUP, VERSION, PLURAL, namespace, action.body)
                done.append(f"{'created' if created else 'already exists:'} TrainingPipeline {action.name}")
            else:  # pragma: no cover - a new Action type without a case here
                raise TypeError(f"unknown action {action!r}")
        return done

    # -- TrainingPipelines ----------------------------------------------------------------------

    def _get(self, plural: str, namespace: str, name: str) -> dict | None:
        """A zhinao.ai object, None when there is none of that name."""
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as exc:
            if _absent(exc):
                return None
            raise

    def get_pipeline(self, namespace: str, name: str) -> dict | None:
        return self._get(PLURAL, namespace, name)

    def list_pipelines(self, namespace: str | None) -> list[dict]:
        if namespace is None:
            out = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            out = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return sorted(out.get("items", []), key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def create_pipeline(self, namespace: str, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def delete_pipeline(self, namespace: str, name: str) -> bool:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return True
        except ApiException as exc:
            if _absent(exc):
                return False
            raise

    def patch_pipeline_status(self, namespace: str, name: str, status: dict) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    def list_ablation_runs(self, namespace: str, ablation: str) -> dict[str, dict]:
        """The ablation's runs (TrainingPipelines labelled with it) by name."""
        return self._list_labelled(GROUP, VERSION, PLURAL, namespace, LABEL_ABLATION, ablation)

    # -- Ablations ------------------------------------------------------------------------------

    def get_ablation(self, namespace: str, name: str) -> dict | None:
        return self._get(ABLATION_PLURAL, namespace, name)

    def create_ablation(self, namespace: str, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, ABLATION_PLURAL, body)

    def patch_ablation_status(self, namespace: str, name: str, status: dict) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, ABLATION_PLURAL, name, {"status": status}
        )

    # -- Pods (CLI: logs and live metrics) ------------------------------------------------------

    def job_pods(self, namespace: str, job: str, role: str | None = "master") -> list[dict]:
        selector = f"{POD_JOB_LABEL}={job}" + (f",{POD_ROLE_LABEL}={role}" if role else "")
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector)
        out = [self.api_client.sanitize_for_serialization(p) for p in pods.items]
        out = [p for p in out if (p["metadata"].get("labels") or {}).get(POD_JOB_LABEL) == job]  # selector, re-checked
        return sorted(out, key=lambda p: p["metadata"]["name"])

    def pod_logs(self, namespace: str, pod: str, container: str | None = None, tail: int | None = None) -> str:
        kwargs = {"container": container} if container else {}
        if tail is not None:
            kwargs["tail_lines"] = tail
        return self.core.read_namespaced_pod_log(pod, namespace, **kwargs)

    def scrape(self, namespace: str, pod: str, port: int, path: str = "metrics") -> str:
        """A pod's /metrics through the API server's pod proxy (no port-forward needed)."""
        return self.core.connect_get_namespaced_pod_proxy_with_path(f"{pod}:{port}", namespace, path)
