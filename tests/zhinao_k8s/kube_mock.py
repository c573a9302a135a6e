"""A Kubernetes API for the operator and CLI tests: kmock's stateful emulator on 127.0.0.1.

Imported by conftest.py (the `kube` fixture) and by tests (`from kube_mock import ...`); a plain
module with a unique name, because several conftest.py files share the name `conftest`.

kmock serves HTTP from its own event loop in a background thread, so the synchronous kubernetes
client (used by the test body, the CLI and the operator's handlers) and kopf (another thread, its
own loop) all talk to it over real HTTP, as they would to an API server.

    KubeMock(workdir).start()  .url, .kubeconfig (a file), .cluster (a k8s.Cluster on it),
                               .call(fn) runs fn(emulator) on kmock's loop, .stop()
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

import kmock
import yaml

RESOURCES = {
    "zhinao.ai/v1alpha1/trainingpipelines": kmock.ResourceInfo(
        kind="TrainingPipeline", singular="trainingpipeline", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, shortnames={"tp"},
    ),
    "kubeflow.org/v1/pytorchjobs": kmock.ResourceInfo(
        kind="PyTorchJob", singular="pytorchjob", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "v1/pods": kmock.ResourceInfo(kind="Pod", singular="pod", namespaced=True, subresources={"log", "proxy"},
                                  verbs={"get", "list", "watch", "create", "delete"}),
    "v1/events": kmock.ResourceInfo(kind="Event", singular="event", namespaced=True, verbs={"create", "list", "watch"}),
    # Discovered only (kopf waits to see them); the operator runs with scanning off and lists neither.
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", singular="namespace", namespaced=False, verbs={"list", "watch"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False, verbs={"list", "watch"}),
}


class Emulator(kmock.KubernetesEmulator):
    """kmock plus the metadata an API server assigns on create (uid, creationTimestamp, generation),
    which owner references and `kubectl get` ages need."""

    _counter = itertools.count(1)

    async def _handle(self, request):  # type: ignore[override]
        if request.resource is not None and request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = str(next(self._counter))
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
        elif request.resource is not None and request.action == kmock.action.UPDATE and isinstance(request.data, dict):
            # Every write gets a new resourceVersion, as kopf expects from a real API server.
            request.data.setdefault("metadata", {})["resourceVersion"] = str(next(self._counter))
        return await super()._handle(request)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KubeMock:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.url = ""
        self.emulator: Emulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> "KubeMock":
        self._thread = threading.Thread(target=self._main, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error:
            raise RuntimeError(f"kmock did not start: {self._error!r}")
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "kmock"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "team-a"}}],
        }))
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with Emulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            for key, info in RESOURCES.items():
                emulator.resources[key] = info
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def call(self, coro_fn, timeout: float = 10):
        """Run `coro_fn(emulator)` on kmock's loop (to add reactions or read state safely)."""
        async def run():
            return coro_fn(self.emulator)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def cluster(self):
        from zhinao_k8s.k8s import Cluster, load_client
        return Cluster(load_client(str(self.kubeconfig)))
