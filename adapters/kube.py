"""A small async facade over the official Kubernetes client: every call runs in a worker thread.

kopf is asyncio; the official client is synchronous, so each call runs in the facade's own thread pool and the
event loop never blocks. Objects come back as plain camelCase dicts, the way the API server sends them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from adapters.operator_metrics import API_REQUESTS
from crds.base import API_VERSION, GROUP, VERSION

log = logging.getLogger(__name__)
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (JSON is YAML)
# Calls in flight at once. asyncio's default pool has min(32, cores + 4) threads, 6 on a 2-core node: a burst of
# reconciles then queued behind it, not behind the API server (bench/results/scale.md). One connection a thread.
API_THREADS = 32
RESOURCES = {"Service": "services", "PodDisruptionBudget": "poddisruptionbudgets"}
KINDS = {"llmservices": "LLMService", "finetunejobs": "FineTuneJob", "powerbudgets": "PowerBudget"}


class FieldManager(StrEnum):
    """Who writes a status field. One writer per field: each applies only the fields it owns."""

    RECONCILER = "ebbtide-reconciler"  # the reconcilers: gangs, replicas, phase, Ready/Progressing/Degraded, ...
    AUTOSCALER = "ebbtide-autoscaler"  # the autoscaler: desiredReplicas, forecast, AutoscalerDegraded, SLOAttainable
    POWER = "ebbtide-power"  # the power manager: PowerBudget drawn/forecast/headroom/caps and the four power
    # conditions; LLMService powerCapWatts


# The facade's errors. Shells catch these names, never the client library's, so only this module depends on
# it: ApiError is the API server's answer (status, reason, body); NetworkError is no answer at all.
ApiError = ApiException
NetworkError = (urllib3.exceptions.HTTPError, OSError)


def load_config(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient from the given kubeconfig, $KUBECONFIG, or the in-cluster service account."""
    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    except (config.ConfigException, TypeError, FileNotFoundError):
        config.load_incluster_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = API_THREADS
    return client.ApiClient(cfg)


def covers(current: Any, wanted: Any) -> bool:
    """Whether an object as the server holds it has every field `wanted` sets (the server's defaults aside)."""
    if isinstance(wanted, dict):
        return isinstance(current, dict) and all(covers(current.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(current, list)
            and len(current) == len(wanted)
            and all(covers(c, w) for c, w in zip(current, wanted, strict=True))
        )
    return bool(current == wanted)


class Kube:
    """The handful of API writes the controllers make (the RBAC rules in the chart mirror this list); reads come
    from the watch-fed caches in cache.py."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.policy = client.PolicyV1Api(api)
        self.scheduling = client.SchedulingV1Api(api)
        self._pool = ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="kube-api")

    async def _call(self, verb: str, resource: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run one blocking client call in the facade's pool, counted by verb and resource."""
        API_REQUESTS.labels(verb, resource).inc()
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def apply_status(
        self, plural: str, namespace: str | None, name: str, status: dict[str, Any], manager: FieldManager
    ) -> None:
        """Server-side apply of `status` as `manager`: it owns exactly the fields it sends (each condition by its
        type), a field it sent before and leaves out now is removed, and other managers' fields are untouched."""
        metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
        body = {"apiVersion": API_VERSION, "kind": KINDS[plural], "metadata": metadata, "status": status}
        # force: Ebbtide's writers never share a field, so a conflict can only be with a field an older operator
        # wrote by merge patch; the writer that owns it now takes it over.
        options: dict[str, Any] = {"field_manager": manager, "force": True, "_content_type": APPLY_PATCH}

        def call() -> Any:
            if namespace is None:
                return self.custom.patch_cluster_custom_object_status(GROUP, VERSION, plural, name, body, **options)
            return self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, body, **options
            )

        try:
            await self._call("apply", f"{plural}/status", call)
        except ApiException as e:
            if e.status != 404:
                raise

    async def patch_object_metadata(
        self, plural: str, namespace: str, name: str, annotations: dict[str, str | None]
    ) -> None:
        body = {"metadata": {"annotations": annotations}}
        await self._call(
            "patch", plural, self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, plural, name, body
        )

    async def annotate_node(self, name: str, annotations: dict[str, str | None]) -> None:
        """Merge-patch a node's annotations (None removes one): the power manager's caps for the node agent."""
        await self._call("patch", "nodes", self.core.patch_node, name, {"metadata": {"annotations": annotations}})

    async def patch_object_spec(self, plural: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Merge-patch part of an object's spec (a list given is the whole new list)."""
        await self._call(
            "patch",
            plural,
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"spec": spec},
        )

    async def scale(self, plural: str, namespace: str, name: str, replicas: int) -> None:
        """Write spec.replicas through the scale subresource, as HPA and KEDA do."""
        await self._call(
            "patch",
            f"{plural}/scale",
            self.custom.patch_namespaced_custom_object_scale,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"spec": {"replicas": replicas}},
        )

    async def create_pod(self, manifest: dict[str, Any]) -> bool:
        """Create; False when it already exists (creation is idempotent by name)."""
        try:
            create: Any = self.core.create_namespaced_pod
            await self._call("create", "pods", create, manifest["metadata"]["namespace"], manifest)
            return True
        except ApiException as e:
            if e.status == 409:
                return False
            raise

    async def delete_pod(self, namespace: str, name: str, grace_period_seconds: int | None = None) -> None:
        """Delete a pod with its own grace period (SIGTERM first), or the one given (0: at once)."""
        try:
            await self._call(
                "delete",
                "pods",
                self.core.delete_namespaced_pod,
                name,
                namespace,
                grace_period_seconds=grace_period_seconds,
            )
        except ApiException as e:
            if e.status != 404:
                raise

    async def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        try:
            await self._call("patch", "pods", self.core.patch_namespaced_pod, name, namespace, patch)
        except ApiException as e:
            if e.status != 404:
                raise

    async def ensure(self, manifest: dict[str, Any], current: dict[str, Any] | None = None) -> None:
        """Create a Service or PodDisruptionBudget, or bring `current` (the cached object, None when there is
        none) in line with the manifest's spec; nothing when it already is."""
        ns, name, kind = manifest["metadata"]["namespace"], manifest["metadata"]["name"], manifest["kind"]
        if current is not None and covers(current.get("spec"), manifest["spec"]):
            return
        create: Any
        patch: Any
        if kind == "Service":
            create, patch = self.core.create_namespaced_service, self.core.patch_namespaced_service
        elif kind == "PodDisruptionBudget":
            create = self.policy.create_namespaced_pod_disruption_budget
            patch = self.policy.patch_namespaced_pod_disruption_budget
        else:
            raise ValueError(f"ensure() does not handle {kind}")
        if current is None:
            try:
                await self._call("create", RESOURCES[kind], create, ns, manifest)
                return
            except ApiException as e:
                if e.status != 409:
                    raise
        spec = dict(manifest["spec"])
        spec.pop("clusterIP", None)  # immutable once set
        await self._call("patch", RESOURCES[kind], patch, name, ns, {"spec": spec})

    async def bind(self, namespace: str, pod: str, node: str, annotations: dict[str, str] | None = None) -> bool:
        """Bind a pod to a node (Binding API); False when it is gone or already bound by another binder. The API
        server sets the binding's annotations on the pod in the same write (kube-scheduler's extenders use this)."""
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=pod, namespace=namespace, annotations=annotations),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
        )
        try:
            await self._call(
                "create", "pods/binding", self.core.create_namespaced_binding, namespace, body, _preload_content=False
            )
            return True
        except ApiException as e:
            if e.status not in (404, 409):
                raise
            return False

    async def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            await self._call(
                "patch", "pods/status", self.core.patch_namespaced_pod_status, name, namespace, {"status": status}
            )
        except ApiException as e:
            if e.status != 404:
                raise

    async def create_event(self, obj: dict[str, Any], type_: str, reason: str, message: str, component: str) -> None:
        """A core/v1 Event about `obj` (best effort: a refused Event is logged, not raised)."""
        meta = obj["metadata"]
        ns = meta.get("namespace") or "default"
        now = datetime.now(tz=UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=ns),
            involved_object=client.V1ObjectReference(
                api_version=obj.get("apiVersion", "v1"),
                kind=obj.get("kind", "Pod"),
                name=meta["name"],
                namespace=ns,
                uid=meta.get("uid"),
            ),
            reason=reason,
            message=message[:1000],
            type=type_,
            source=client.V1EventSource(component=component),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await self._call("create", "events", self.core.create_namespaced_event, ns, event)
        except ApiException as e:
            log.info("event %s on %s not posted: %s", reason, meta["name"], e.reason)
