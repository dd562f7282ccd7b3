"""Cache events trigger reconciles: coalesced, only on the peering leader, only in the operator's namespace."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from adapters.cache import ClusterCache
from adapters.engine_api import EngineClient
from adapters.kube import Kube
from controllers.shells import handlers
from crds import labels as L
from tests.unit.controllers.builders import RecordingKube


def reconciles() -> float:
    return sum(
        REGISTRY.get_sample_value("ebbtide_reconciles_total", {"kind": "LLMService", "result": r}) or 0.0
        for r in ("ok", "error", "invalid")
    )


@pytest.fixture
def runtime() -> Iterator[handlers.Runtime]:
    kube = cast(Kube, RecordingKube())
    cache = ClusterCache(kube)
    for informer in cache.informers():
        informer.replace([])
    before = handlers.RUNTIME
    handlers.RUNTIME = handlers.Runtime(kube=kube, cache=cache, engines=cast(EngineClient, None), namespace="team")
    handlers.listen(cache)
    yield handlers.RUNTIME
    handlers.RUNTIME = before


def service_pod(name: str, ns: str = "team", node: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {L.SERVICE: "svc"}, "resourceVersion": node or "1"},
        "spec": {"nodeName": node},
    }


async def test_a_burst_of_pod_events_reconciles_the_owner_once(runtime: handlers.Runtime) -> None:
    start = reconciles()
    runtime.cache.pods.apply("ADDED", service_pod("svc-r0"))
    runtime.cache.pods.apply("MODIFIED", service_pod("svc-r0", node="n1"))
    runtime.cache.pods.apply("ADDED", service_pod("svc-r1"))
    await asyncio.sleep(0.4)
    assert reconciles() - start == 1


async def test_a_standby_replica_and_other_namespaces_trigger_nothing(runtime: handlers.Runtime) -> None:
    start = reconciles()
    runtime.cache.pods.apply("ADDED", service_pod("svc-r0", ns="elsewhere"))
    runtime.leader = lambda: False
    runtime.cache.pods.apply("ADDED", service_pod("svc-r1"))
    await asyncio.sleep(0.4)
    assert reconciles() == start


async def test_a_reconcile_the_cache_triggered_reports_an_invalid_spec_with_an_event(runtime: handlers.Runtime) -> None:
    # Stored before a schema change: the API types reject it, so the reconcile reports it (condition, Event).
    invalid = {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "svc", "namespace": "team", "uid": "u1", "resourceVersion": "1"},
        "spec": {"replicas": 1},
    }
    runtime.cache.llmservices.apply("ADDED", invalid)
    runtime.cache.pods.apply("ADDED", service_pod("svc-r0"))
    await asyncio.sleep(0.4)
    calls = cast(RecordingKube, runtime.kube).calls
    assert ("status", "svc") in calls and ("event", "InvalidSpec") in calls


def managed(kind: str) -> float | None:
    return REGISTRY.get_sample_value("ebbtide_managed_objects", {"kind": kind})


async def test_the_managed_objects_gauge_follows_the_cache(runtime: handlers.Runtime) -> None:
    def budget(name: str) -> dict[str, Any]:
        return {"apiVersion": "ebbtide.dev/v1alpha1", "kind": "PowerBudget", "metadata": {"name": name, "uid": name}}

    runtime.cache.powerbudgets.apply("ADDED", budget("rack-a"))
    runtime.cache.powerbudgets.apply("ADDED", budget("rack-b"))
    assert managed("PowerBudget") == 2.0
    runtime.cache.powerbudgets.apply("DELETED", budget("rack-a"))
    assert managed("PowerBudget") == 1.0
