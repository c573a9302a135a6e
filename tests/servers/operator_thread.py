"""The operator (`run_operator`) in a thread of the test process, on 127.0.0.1, with a stop flag.

Also the two things every operator test does besides: wait for a condition, and play the training
operator by setting a PyTorchJob's conditions. Importing this module sets the operator's safety-net
timer to 2 s (ZHINAO_RECONCILE_INTERVAL, read when the handlers are first imported); events drive
the normal flow.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable

from zhinao_k8s.runner.local import free_port

os.environ.setdefault("ZHINAO_RECONCILE_INTERVAL", "2")

from zhinao_k8s.controller.k8s import JOB_GROUP, JOB_PLURAL, JOB_VERSION, Cluster  # noqa: E402

NS = "team-a"
"""The one namespace the operator watches (by default; `namespaces=()` watches all, as the chart does)."""
T = "2026-01-01T00:00:00Z"


def wait_for(what: str, fn: Callable[[], object], timeout: float = 20) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Operator:
    """run_operator in a thread, with a stop flag; restartable."""

    def __init__(self, cluster: Cluster, namespaces: tuple[str, ...] = (NS,)):
        self.cluster = cluster
        self.namespaces = list(namespaces)
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    def start(self) -> None:
        from zhinao_k8s.controller.operator import run_operator

        self.stop_flag, ready = threading.Event(), threading.Event()

        def main() -> None:
            try:
                run_operator(
                    namespaces=self.namespaces,
                    metrics_port=self.metrics_port,
                    health_port=self.health_port,
                    bind="127.0.0.1",
                    cluster=self.cluster,
                    stop_flag=self.stop_flag,
                    ready_flag=ready,
                )
            except BaseException as exc:  # pragma: no cover - reported by the test
                self.errors.append(exc)
                ready.set()

        self.thread = threading.Thread(target=main, name="operator", daemon=True)
        self.thread.start()
        assert ready.wait(20) and not self.errors, self.errors

    def stop(self) -> None:
        if self.thread is not None:
            self.stop_flag.set()
            self.thread.join(20)
            assert not self.thread.is_alive(), "operator did not stop"
            self.thread = None

    def get(self, port: int, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()


def set_job_condition(cluster: Cluster, name: str, kind: str, message: str = "") -> None:
    conds = [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated", "lastTransitionTime": T}]
    if kind != "Created":
        conds.append(
            {"type": kind, "status": "True", "reason": f"PyTorchJob{kind}", "message": message, "lastTransitionTime": T}
        )
    cluster.custom.patch_namespaced_custom_object_status(
        JOB_GROUP, JOB_VERSION, NS, JOB_PLURAL, name, {"status": {"conditions": conds}}
    )


def finish_plan_job(cluster: Cluster, name: str, message: str, end: str = "Complete") -> None:
    """Play the Job controller for a memory plan Job: its pod terminates with `message` as the
    termination message, then the Job gets its final condition (in that order, as on a cluster)."""
    exit_code = 0 if end == "Complete" else 2
    cluster.core.create_namespaced_pod(
        NS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-x7k2p", "labels": {"batch.kubernetes.io/job-name": name, "job-name": name}},
            "spec": {"containers": [{"name": "pytorch", "image": "trainer:1"}], "restartPolicy": "Never"},
            "status": {
                "phase": "Succeeded" if end == "Complete" else "Failed",
                "containerStatuses": [
                    {
                        "name": "pytorch",
                        "image": "trainer:1",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": exit_code, "message": message}},
                    }
                ],
            },
        },
    )
    cluster.batch.patch_namespaced_job_status(
        name, NS, {"status": {"conditions": [{"type": end, "status": "True", "lastTransitionTime": T}]}}
    )
