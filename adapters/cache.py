"""Watch-fed caches of cluster objects: list once, then follow a watch from the list's resourceVersion.

One `Informer` per kind. Its list-and-watch loop runs in a thread (the official client is synchronous) and hands
every change to the event loop (`call_soon_threadsafe`), so the store is only ever changed and read on the loop:
readers never see it mid-update and need no locks. When the watch's resourceVersion expires (410 Gone) or the
stream fails, the informer lists again and *replaces* its store, reporting the objects that vanished in between as
deleted (a watch gap never leaves a ghost behind). Objects are plain camelCase dicts, as the API server sends
them, without `metadata.managedFields`; readers must treat them as read-only.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from kubernetes.watch.watch import iter_resp_lines

from adapters.kube import ApiError, Kube
from adapters.operator_metrics import API_REQUESTS
from crds import labels as L
from crds.base import GROUP, VERSION

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Change = Literal["ADDED", "MODIFIED", "DELETED"]
# (event type, the object before, the object after): old is None when added, new is None when deleted.
Listener = Callable[[Change, Obj | None, Obj | None], None]
IndexFn = Callable[[Obj], Iterable[str]]

PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
WATCH_TIMEOUT_S = 300  # the server ends each watch after this long; the informer resumes from its resourceVersion
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # back-off between failed lists


def key_of(obj: Obj) -> str:
    """namespace/name, or name for a cluster-scoped object."""
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


class _Expired(Exception):
    """The watch's resourceVersion is gone from the server's history: list again."""


class Informer:
    """One kind's objects, kept current by list-and-watch; optional indices map a computed value to objects."""

    def __init__(
        self,
        kind: str,
        list_fn: Callable[..., Any],
        *args: Any,
        label_selector: str | None = None,
        indices: dict[str, IndexFn] | None = None,
        trim: Callable[[Obj], Obj] | None = None,
    ) -> None:
        self.kind = kind
        self._trim_fn = trim
        self._list_fn, self._args = list_fn, args
        self._kwargs: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}
        self._store: dict[str, Obj] = {}
        self._index_fns = indices or {}
        self._indices: dict[str, dict[str, set[str]]] = {name: {} for name in self._index_fns}
        self._listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context: contextvars.Context | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.synced = asyncio.Event()
        self.relists = 0

    # ---- reading (on the event loop) -------------------------------------------------------------------

    def get(self, key: str) -> Obj | None:
        return self._store.get(key)

    def items(self) -> list[Obj]:
        return list(self._store.values())

    def __len__(self) -> int:
        return len(self._store)

    def by_index(self, index: str, value: str) -> list[Obj]:
        return [self._store[k] for k in sorted(self._indices[index].get(value, ()))]

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # ---- applying changes (on the event loop) ------------------------------------------------------------

    def apply(self, type_: Change, obj: Obj) -> None:
        """One watch event."""
        key = key_of(obj)
        old = self._store.get(key)
        if type_ == "DELETED":
            if old is None:
                return
            self._unindex(key, old)
            del self._store[key]
            self._emit("DELETED", old, None)
            return
        obj = _trim(obj) if self._trim_fn is None else self._trim_fn(_trim(obj))
        if old is not None:
            self._unindex(key, old)
        self._store[key] = obj
        self._index(key, obj)
        self._emit("MODIFIED" if old is not None else "ADDED", old, obj)

    def replace(self, items: list[Obj]) -> None:
        """A full list: the store becomes exactly these objects; what changed since is reported as events."""
        fresh = {key_of(o): o for o in items}
        for key in [k for k in self._store if k not in fresh]:
            self.apply("DELETED", self._store[key])
        for key, obj in fresh.items():
            old = self._store.get(key)
            if old is None or _version(old) != _version(obj):
                self.apply("MODIFIED" if old is not None else "ADDED", obj)
        self.relists += 1
        self.synced.set()

    def _emit(self, type_: Change, old: Obj | None, new: Obj | None) -> None:
        for listener in self._listeners:
            try:
                listener(type_, old, new)
            except Exception:
                log.exception("%s cache listener failed", self.kind)

    def _index(self, key: str, obj: Obj) -> None:
        for name, fn in self._index_fns.items():
            for value in fn(obj):
                self._indices[name].setdefault(value, set()).add(key)

    def _unindex(self, key: str, obj: Obj) -> None:
        for name, fn in self._index_fns.items():
            for value in fn(obj):
                keys = self._indices[name].get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._indices[name][value]

    # ---- the list-and-watch thread -------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread; changes are applied (and listeners called) on `loop`, in the caller's context."""
        self._loop = loop
        self._context = contextvars.copy_context()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current watch request. Closing its response from here would block until the thread's
        read returns (they share the connection's buffer lock); the thread is a daemon, so it never holds the
        process up at exit."""
        self._stop.set()

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args, context=self._context)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                version = self._list()
                failures = 0
                while not self._stop.is_set():
                    version = self._watch(version)
            except _Expired:
                log.debug("%s watch expired; listing again", self.kind)
            except Exception as e:  # a dropped connection or an API error: list again after a pause
                if self._stop.is_set():
                    return
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                reason = f"{e.status} {e.reason}" if isinstance(e, ApiError) else f"{type(e).__name__}: {e}"
                log.warning("%s watch failed (%s); listing again in %.0fs", self.kind, reason, delay)
                self._stop.wait(delay)

    def _list(self) -> str:
        API_REQUESTS.labels("list", self.kind).inc()
        resp = self._list_fn(*self._args, _preload_content=False, **self._kwargs)
        body = json.loads(resp.data)
        self._post(self.replace, list(body.get("items") or []))
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """Follow one watch request to its end; the last resourceVersion seen."""
        API_REQUESTS.labels("watch", self.kind).inc()
        resp = self._list_fn(
            *self._args,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_S,
            _preload_content=False,
            **self._kwargs,
        )
        try:
            for line in _lines(resp):
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired()
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self._post(self.apply, event["type"], obj)
                if self._stop.is_set():
                    break
        finally:
            resp.release_conn()
        return version


def _lines(resp: Any) -> Iterator[str]:
    for line in iter_resp_lines(resp):
        if line:
            yield line if isinstance(line, str) else line.decode()


def _trim(obj: Obj) -> Obj:
    meta = obj.get("metadata") or {}
    if "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


def trim_pod(pod: Obj) -> Obj:
    """A pod as the operator reads it: its containers' names and resources only (their command lines, environment
    and mounts are most of a serving pod's size and nothing here reads them), no volumes."""
    spec = pod.get("spec")
    if not spec:
        return pod
    slim = {k: v for k, v in spec.items() if k not in ("volumes", "containers", "initContainers")}
    for key in ("containers", "initContainers"):
        if key in spec:
            slim[key] = [{"name": c.get("name"), "resources": c.get("resources") or {}} for c in spec[key]]
    return {**pod, "spec": slim}


def trim_node(node: Obj) -> Obj:
    """A node without what only the kubelet and humans read: its image list, system info, daemon endpoints and
    addresses (about a quarter of a node's size)."""
    status = node.get("status")
    if not status:
        return node
    drop = ("images", "nodeInfo", "daemonEndpoints", "addresses")
    return {**node, "status": {k: v for k, v in status.items() if k not in drop}}


def _version(obj: Obj) -> str:
    return str(obj["metadata"].get("resourceVersion", ""))


# ---- the operator's caches ---------------------------------------------------------------------------------


def _label(name: str) -> IndexFn:
    def index(obj: Obj) -> Iterable[str]:
        value = (obj["metadata"].get("labels") or {}).get(name)
        return (f"{obj['metadata']['namespace']}/{value}",) if value else ()

    return index


def _unscheduled(obj: Obj) -> Iterable[str]:
    """A live pod no node holds yet, by the scheduler it waits for."""
    spec = obj.get("spec") or {}
    if spec.get("nodeName") or obj["metadata"].get("deletionTimestamp"):
        return ()
    if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return ()
    return (str(spec.get("schedulerName") or "default-scheduler"),)


class ClusterCache:
    """Everything the reconcilers and the packer read, fed by one watch per kind."""

    def __init__(self, kube: Kube, peering: bool = True, peering_namespace: str | None = None) -> None:
        """`peering` False (a standalone operator) leaves the peering object unwatched: it may not even exist."""
        managed = f"{L.MANAGED_BY}={L.OPERATOR}"  # only the Services and PDBs Ebbtide creates
        self.pods = Informer(
            "pods",
            kube.core.list_pod_for_all_namespaces,
            indices={
                "service": _label(L.SERVICE),
                "finetune": _label(L.FINETUNE),
                "unscheduled": _unscheduled,
            },
            trim=trim_pod,
        )
        self.nodes = Informer("nodes", kube.core.list_node, trim=trim_node)
        self.priority_classes = Informer("priorityclasses", kube.scheduling.list_priority_class)
        self.pdbs = Informer(
            "poddisruptionbudgets",
            kube.policy.list_pod_disruption_budget_for_all_namespaces,
            label_selector=managed,
        )
        self.services = Informer("services", kube.core.list_service_for_all_namespaces, label_selector=managed)
        self.llmservices = Informer(
            "llmservices", kube.custom.list_cluster_custom_object, GROUP, VERSION, "llmservices"
        )
        self.finetunejobs = Informer(
            "finetunejobs", kube.custom.list_cluster_custom_object, GROUP, VERSION, "finetunejobs"
        )
        self.powerbudgets = Informer(
            "powerbudgets", kube.custom.list_cluster_custom_object, GROUP, VERSION, "powerbudgets"
        )
        if peering_namespace is None:
            self.peerings = Informer(
                "clusterkopfpeerings",
                kube.custom.list_cluster_custom_object,
                PEERING_GROUP,
                PEERING_VERSION,
                "clusterkopfpeerings",
            )
        else:
            self.peerings = Informer(
                "kopfpeerings",
                kube.custom.list_namespaced_custom_object,
                PEERING_GROUP,
                PEERING_VERSION,
                peering_namespace,
                "kopfpeerings",
            )
        self.objects = {
            "llmservices": self.llmservices,
            "finetunejobs": self.finetunejobs,
            "powerbudgets": self.powerbudgets,
        }
        self._peering = peering

    def informers(self) -> list[Informer]:
        state = [self.pods, self.nodes, self.priority_classes, self.pdbs, self.services, *self.objects.values()]
        return [*state, self.peerings] if self._peering else state

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for informer in self.informers():
            informer.start(loop)

    async def wait_synced(self) -> None:
        """Until every informer of cluster state has listed once. Not the peering object's: until it is seen, the
        replica does not lead (as kopf, which pauses without it), but it must still start."""
        await asyncio.gather(*(i.synced.wait() for i in self.informers() if i is not self.peerings))

    def stop(self) -> None:
        for informer in self.informers():
            informer.stop()

    def object(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        return self.objects[plural].get(f"{namespace}/{name}" if namespace else name)

    def priority_class_values(self) -> dict[str, int]:
        return {pc["metadata"]["name"]: int(pc.get("value", 0)) for pc in self.priority_classes.items()}

    def owned(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The cached Service or PodDisruptionBudget Ebbtide manages under this name."""
        informer = {"Service": self.services, "PodDisruptionBudget": self.pdbs}[kind]
        return informer.get(f"{namespace}/{name}")
