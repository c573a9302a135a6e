"""A Kubernetes API for the operator and CLI tests: kmock's stateful emulator on 127.0.0.1.

Imported by tests/zhinao_k8s/conftest.py (the `kube` fixture), by tests
(`from servers.kube_mock import ...`) and by bench/operator_scale.py.

kmock serves HTTP from its own event loop in a background thread, so the synchronous kubernetes
client (used by the test body, the CLI and the operator's handlers) and kopf (another thread, its
own loop) all talk to it over real HTTP, as they would to an API server.

    KubeMock(workdir).start()  .url, .kubeconfig (a file), .cluster (a k8s.Cluster on it),
                               .call(fn) runs fn(emulator) on kmock's loop, .stop(),
                               .created(plural): {(namespace, name): time.monotonic() of the create}

Dispatch cost: kmock keeps every request it served (tests assert on that history), and its stock
dispatch asks "is this request in the reaction's view?" by re-filtering that whole history, for
each of the ~11 built-in reactions, on every request. That is O(requests so far) per request and
O(n^2) in all: measured, the 600th request took over a second of CPU on kmock's single loop (the
operator scale bench stalled on exactly this). `_DirectDispatch` answers the same question for the
request alone, so dispatch no longer grows with the number of requests served.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import kmock
import yaml

from servers import kube_strict

RESOURCES = {
    "zhinao.ai/v1alpha1/trainingpipelines": kmock.ResourceInfo(
        kind="TrainingPipeline",
        singular="trainingpipeline",
        namespaced=True,
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        shortnames={"tp"},
    ),
    "zhinao.ai/v1alpha1/ablations": kmock.ResourceInfo(
        kind="Ablation",
        singular="ablation",
        namespaced=True,
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        shortnames={"abl"},
    ),
    "kubeflow.org/v1/pytorchjobs": kmock.ResourceInfo(
        kind="PyTorchJob",
        singular="pytorchjob",
        namespaced=True,
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    # A GPU stage's memory plan Job (render/plan_job.py); the tests play the Job controller.
    "batch/v1/jobs": kmock.ResourceInfo(
        kind="Job",
        singular="job",
        namespaced=True,
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "v1/pods": kmock.ResourceInfo(
        kind="Pod",
        singular="pod",
        namespaced=True,
        subresources={"log", "proxy"},
        verbs={"get", "list", "watch", "create", "delete"},
    ),
    "v1/events": kmock.ResourceInfo(kind="Event", singular="event", namespaced=True, verbs={"create", "list", "watch"}),
    # Discovered only (kopf waits to see them); the operator runs with scanning off and lists neither.
    "v1/namespaces": kmock.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs={"list", "watch"}
    ),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False, verbs={"list", "watch"}
    ),
}


def _reaches(view: kmock.View, request: kmock.Request, root: kmock.Root) -> bool | None:
    """Whether `request` (just recorded by `root`) is seen through `view`, decided for that request
    alone; None where the view is not a plain chain of filters and priorities over `root` (slices,
    and/or groups, exclusions, ...), whose answer depends on other requests."""
    filters: list[kmock.Filter] = []
    while True:
        if view is root:
            break
        if type(view) is kmock.Filter:
            filters.append(view)
        elif type(view) is not kmock.Priority:
            return None
        view = view._source
    # Innermost first, the order in which kmock's own Filter iteration applies them.
    return all(f.criteria(request) for f in reversed(filters))


class _DirectDispatch(kmock.RawHandler):
    """kmock's reaction matching (highest priority first, first reaction that answers wins), with
    the per-request membership test of `_reaches` instead of a scan of all requests served so far."""

    __slots__ = ()

    async def _handle(self, request):  # type: ignore[override]
        reactions = list(self._payloads)
        width = max((len(r.priorities) for r in reactions), default=0)

        def rank(r: kmock.Reaction) -> tuple[float, ...]:  # higher priorities first, shorter padded with 0
            return tuple(-p for p in r.priorities) + (0,) * (width - len(r.priorities))

        for reaction in sorted(reactions, key=rank):  # stable: equal ranks keep their order
            if reaction._disabled.is_set():
                continue
            seen = _reaches(reaction._source, request, self)
            if seen is None:  # a view that needs the history: ask kmock the slow way
                seen = request in reaction._source
            if not seen:
                continue
            try:
                return await reaction(request)
            except kmock.ReactionMismatchError:  # a mismatch or a depleted reaction
                reaction._disabled.set()
            except NotImplementedError:  # matched, but nothing to answer with
                pass
        raise NotImplementedError("no kmock reaction matches the request")


def _label_matcher(selector: str):
    """A predicate on an object's labels for an equality-based selector (`k=v`, `k==v`, `k!=v`, `k`,
    `!k`, comma-joined); None for anything else (set-based), which is then not filtered."""
    tests = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = (x.strip() for x in term.split("!=", 1))
            tests.append(lambda labels, k=k, v=v: labels.get(k) != v)
        elif "=" in term:
            k, v = (x.strip() for x in term.replace("==", "=").split("=", 1))
            tests.append(lambda labels, k=k, v=v: labels.get(k) == v)
        elif " " in term or "(" in term:
            return None
        elif term.startswith("!"):
            tests.append(lambda labels, k=term[1:].strip(): k not in labels)
        else:
            tests.append(lambda labels, k=term: k in labels)
    return lambda labels: all(t(labels) for t in tests)


class Emulator(kmock.KubernetesEmulator, _DirectDispatch):
    """kmock plus the metadata an API server assigns on create (uid, creationTimestamp, generation),
    which owner references and `kubectl get` ages need, `?labelSelector=` on lists (kmock ignores
    it and lists every object of the resource: each operator reconcile would read all the jobs), and
    the API server's rules the operator depends on (kube_strict.py): CRD schemas, resourceVersion
    conflicts, generation, the status subresource and the garbage collector."""

    _counter = itertools.count(1)

    async def _serve_list(self, request):  # type: ignore[override]
        listing = await super()._serve_list(request)
        match = _label_matcher(request.params.get("labelSelector") or "")
        if match is not None:
            listing["items"] = [o for o in listing["items"] if match((o.get("metadata") or {}).get("labels") or {})]
        return listing

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # When each object was created (monotonic clock, this process): for latency measurements.
        self.created_at: dict[tuple[str, str | None, str], float] = {}

    def _stored(self, resource, namespace: str | None, name: str | None) -> dict | None:
        key = (resource, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return self._objects[key].raw

    async def _handle(self, request):  # type: ignore[override]
        """What a real API server adds or enforces before kmock stores the object (kube_strict.py)."""
        resource, data = request.resource, request.data
        creating = resource is not None and request.action == kmock.action.CREATE and isinstance(data, dict)
        if creating:
            meta = data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta["generation"] = 1
            meta["resourceVersion"] = str(next(self._counter))
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
            if "status" in (_info(resource).subresources or set()):
                data.pop("status", None)  # set only through the status subresource
            kube_strict.validate(resource, data)
        collect = False  # whether this write can free or orphan something: deletes, finalizer removals
        if resource is not None and request.action == kmock.action.UPDATE and isinstance(data, dict) and request.name:
            stored = self._stored(resource, request.namespace, request.name)
            collect = bool(stored and stored["metadata"].get("deletionTimestamp"))
            if stored is not None:
                kube_strict.check_write(resource, _info(resource), stored, request)
            # Every write gets a new resourceVersion, as kopf expects from a real API server.
            data.setdefault("metadata", {})["resourceVersion"] = str(next(self._counter))
        elif resource is not None and request.action == kmock.action.DELETE and request.name:
            collect = True
            await self._prepare_delete(request)
        response = await super()._handle(request)
        if creating:  # reached only when kmock accepted the create (a conflict raises)
            key = (resource.plural, meta.get("namespace"), meta.get("name"))
            self.created_at.setdefault(key, time.monotonic())
        if collect:
            await self._collect_garbage()
        return response

    async def _prepare_delete(self, request) -> None:
        """Foreground: the owner stays (finalizer `foregroundDeletion`) until its dependents are gone;
        Orphan: the dependents lose their owner reference; Background: the collector follows."""
        stored = self._stored(request.resource, request.namespace, request.name)
        if stored is None or stored["metadata"].get("deletionTimestamp"):
            return
        policy, uid = kube_strict.propagation_policy(request), stored["metadata"].get("uid")
        async with self._lock:
            if policy == "Foreground":
                finalizers = stored["metadata"].get("finalizers") or []
                self._objects[(request.resource, request.namespace, request.name)].patch(
                    {"metadata": {"finalizers": [*finalizers, kube_strict.FOREGROUND]}}
                )
            elif policy == "Orphan":
                for key, obj in list(self._objects.items()):
                    refs = (obj.raw.get("metadata") or {}).get("ownerReferences") or []
                    if not obj.deleted and any(r.get("uid") == uid for r in refs):
                        obj.patch({"metadata": {"ownerReferences": [r for r in refs if r.get("uid") != uid]}})
                        await self._buses[key[0]].put({"type": "MODIFIED", "object": obj.raw})

    async def _collect_garbage(self) -> None:
        """The garbage collector, run to a fixed point after every write: an object all of whose owners
        are gone or being deleted in the foreground is deleted (or marked, if it has finalizers); an
        owner in foreground deletion goes once no dependent is left."""
        async with self._lock:
            changed = True
            while changed:
                changed = False
                live = {key: obj for key, obj in self._objects.items() if not obj.deleted}
                metas = {key: obj.raw.get("metadata") or {} for key, obj in live.items()}
                uids = {m.get("uid") for m in metas.values()}
                foreground = {
                    m.get("uid")
                    for m in metas.values()
                    if m.get("deletionTimestamp") and kube_strict.FOREGROUND in (m.get("finalizers") or [])
                }
                owned = {uid for key in live for uid in kube_strict.owner_uids(live[key].raw)}
                for key, obj in live.items():
                    meta, owners = metas[key], kube_strict.owner_uids(obj.raw)
                    if meta.get("uid") in foreground and meta.get("uid") not in owned:
                        rest = [f for f in meta.get("finalizers") or [] if f != kube_strict.FOREGROUND]
                        changed |= await self._remove(key, obj, finalizers=rest)
                    elif owners and owners <= (foreground | (owners - uids)) and not meta.get("deletionTimestamp"):
                        changed |= await self._remove(key, obj, finalizers=meta.get("finalizers") or [])

    async def _remove(self, key, obj, *, finalizers: list[str]) -> bool:
        """Delete now, or with finalizers left: set them and mark the object for deletion."""
        if finalizers:
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            obj.patch({"metadata": {"finalizers": finalizers, "deletionTimestamp": stamp}})
            await self._buses[key[0]].put({"type": "MODIFIED", "object": obj.raw})
        else:
            raw = obj.raw
            obj.delete()
            await self._buses[key[0]].put({"type": "DELETED", "object": raw})
        return True


def _info(resource) -> kmock.ResourceInfo:
    key = (
        f"{resource.group}/{resource.version}/{resource.plural}"
        if resource.group
        else f"{resource.version}/{resource.plural}"
    )
    return RESOURCES.get(key) or kmock.ResourceInfo()


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

    def start(self) -> KubeMock:
        self._thread = threading.Thread(target=self._main, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error:
            raise RuntimeError(f"kmock did not start: {self._error!r}")
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "kmock",
                    "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                    "users": [{"name": "kmock", "user": {"token": "kmock"}}],
                    "contexts": [
                        {"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "team-a"}}
                    ],
                }
            )
        )
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

    def created(self, plural: str) -> dict[tuple[str | None, str], float]:
        """{(namespace, name): time.monotonic() when kmock accepted its create} for one resource."""
        return self.call(lambda e: {(ns, name): t for (p, ns, name), t in e.created_at.items() if p == plural})

    @property
    def cluster(self):
        from zhinao_k8s.controller.k8s import Cluster, load_client

        return Cluster(load_client(str(self.kubeconfig)))
