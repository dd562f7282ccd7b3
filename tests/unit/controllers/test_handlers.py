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


def queue(metric: str, kind: str = "FineTuneJob") -> float | None:
    return REGISTRY.get_sample_value(f"ebbtide_{metric}", {"kind": kind})


async def test_the_backlog_counts_objects_whose_spec_no_reconcile_has_reported(runtime: handlers.Runtime) -> None:
    # FineTuneJobs: their cache events reach the gauge without a reconcile changing what the test applies.
    def job(name: str, generation: int, observed: int | None, deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": "elsewhere", "uid": name, "generation": generation}
        if deleting:
            meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
        status = {"observedGeneration": observed} if observed is not None else {}
        return {"apiVersion": "ebbtide.dev/v1alpha1", "kind": "FineTuneJob", "metadata": meta, "status": status}

    jobs = runtime.cache.finetunejobs
    jobs.apply("ADDED", job("new", 1, None))
    jobs.apply("ADDED", job("settled", 3, 3))
    assert queue("reconcile_backlog") == 1.0
    jobs.apply("MODIFIED", job("settled", 4, 3))  # a spec change waits for its reconcile
    assert queue("reconcile_backlog") == 2.0
    jobs.apply("MODIFIED", job("new", 1, 1))
    jobs.apply("MODIFIED", job("settled", 4, 3, deleting=True))
    assert queue("reconcile_backlog") == 0.0
    jobs.apply("ADDED", job("gone", 1, None))
    jobs.apply("DELETED", job("gone", 1, None))
    assert queue("reconcile_backlog") == 0.0


async def test_a_reconcile_is_in_flight_only_while_it_runs(runtime: handlers.Runtime) -> None:
    gate = asyncio.Event()
    seen: list[float | None] = []

    @handlers._timed("FineTuneJob")
    async def slow(namespace: str, name: str, full: bool) -> None:
        seen.append(queue("reconciles_in_flight"))
        await gate.wait()

    task = asyncio.create_task(slow("team", "job", True))
    await asyncio.sleep(0.05)
    assert seen == [1.0] and queue("reconciles_in_flight") == 1.0
    gate.set()
    await task
    assert queue("reconciles_in_flight") == 0.0


async def test_a_new_object_the_cache_learns_of_is_reconciled_whole_at_once(runtime: handlers.Runtime) -> None:
    # kopf's create handler may have run before the cache had the object and found nothing: the cache's own
    # ADDED event must not leave it to the first periodic resync.
    body = {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "svc", "namespace": "team", "uid": "u1", "generation": 1, "resourceVersion": "1"},
        "spec": {
            "model": {"name": "m", "source": "hf://org/m", "parametersB": 8},
            "engine": {"type": "simulated"},
            "replicas": 2,
        },
    }
    start = reconciles()
    runtime.cache.llmservices.apply("ADDED", body)
    await asyncio.sleep(0.4)
    calls = cast(RecordingKube, runtime.kube).calls
    assert reconciles() - start == 1
    assert [c for c in calls if c[0] == "create_pod"] and ("ensure", "Service") in calls
