"""The autoscaler's tick for an elastic MoE service: it widens EP or adds replicas as the growth planner chooses,
names the choice in its Event, and after a failed widening undoes it and grows by whole replicas."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from adapters.cache import ClusterCache
from adapters.engine_api import EngineClient
from adapters.kube import Kube
from autoscaler.types import ScalingDecision, ServiceObservation
from controllers.shells import handlers
from controllers.shells.autoscaling import Autoscaler
from crds import labels as L
from tests.unit.controllers.builders import RecordingKube
from tests.unit.controllers.test_autoscaling import (
    FAST_COLD_START_S,
    SLOW_COLD_START_S,
    condition_,
    elastic_moe,
    running_at,
)


@dataclass
class Cluster:
    last: None = None


@dataclass
class WantsTwo:
    """An autoscaler whose loop wants two replicas: what the tick does with that is under test."""

    last_observation: dict[str, ServiceObservation] = field(default_factory=dict)
    cluster: Cluster = field(default_factory=Cluster)

    async def decide(self, key: str, svc: Any, raw: Any, pods: Any, now: float) -> ScalingDecision:
        return ScalingDecision(2, "forecast p90 above one replica's capacity")

    def forget(self, key: str) -> None:
        pass


@pytest.fixture
def runtime() -> Iterator[handlers.Runtime]:
    kube = cast(Kube, RecordingKube())
    cache = ClusterCache(kube)
    for informer in cache.informers():
        informer.replace([])
    before = handlers.RUNTIME
    handlers.RUNTIME = handlers.Runtime(
        kube=kube,
        cache=cache,
        engines=cast(EngineClient, None),
        namespace="ns",
        autoscaler=cast(Autoscaler, WantsTwo()),
    )
    yield handlers.RUNTIME
    handlers.RUNTIME = before


def cached_service(
    runtime: handlers.Runtime,
    expert: int,
    replicas: int = 1,
    conditions: list[dict[str, Any]] | None = None,
    **ann: str,
) -> None:
    """The elastic MoE service, autoscaled, in the runtime's cache."""
    svc = elastic_moe(expert, ann)
    body = {"apiVersion": "ebbtide.dev/v1alpha1", "kind": "LLMService", **svc.model_dump(by_alias=True, mode="json")}
    body["metadata"] |= {"resourceVersion": "1"}
    body["spec"]["replicas"] = replicas
    body["spec"]["scaling"]["policy"] = "forecast"
    body["status"] = {"conditions": conditions or []}
    runtime.cache.llmservices.apply("ADDED", body)


async def tick(
    runtime: handlers.Runtime, expert: int, cold_start_s: float, conditions: list[dict[str, Any]], **ann: str
) -> list[tuple[str, Any]]:
    cached_service(runtime, expert, 1, conditions, **ann)
    raw, _ = running_at(2, cold_start_s)
    for p in raw:
        p["metadata"] |= {"namespace": "ns", "resourceVersion": "1"}
        runtime.cache.pods.apply("ADDED", p)
    await handlers.autoscale("ns", "lite")
    await asyncio.sleep(0)
    return cast(RecordingKube, runtime.kube).calls


async def test_a_slow_cold_start_widens_expert_parallelism_instead_of_adding_a_replica(
    runtime: handlers.Runtime,
) -> None:
    calls = await tick(runtime, 2, SLOW_COLD_START_S, [])
    [spec] = [args for name, args in calls if name == "patch_spec"]
    assert spec["parallelism"]["expert"] > 2
    assert ("annotate", {L.AUTOSCALED_FROM_EXPERT: "2"}) in calls
    assert not [c for c in calls if c[0] == "scale"], "the replica count stays"
    assert ("event", "Autoscaled") in calls


async def test_a_fast_cold_start_adds_a_replica(runtime: handlers.Runtime) -> None:
    calls = await tick(runtime, 2, FAST_COLD_START_S, [])
    assert ("scale", 2) in calls and not [c for c in calls if c[0] == "patch_spec"]
    assert ("event", "Autoscaled") in calls


async def test_without_elastic_ep_the_replica_is_added_with_a_warning_saying_why(runtime: handlers.Runtime) -> None:
    failed = [condition_("RescaleFailed", "ElasticEPUnavailable", "the engine has no /scale_elastic_ep (HTTP 404)")]
    calls = await tick(runtime, 2, SLOW_COLD_START_S, failed)
    assert ("scale", 2) in calls and not [c for c in calls if c[0] == "patch_spec"]
    assert ("event", "ElasticEPUnavailable") in calls
    [(_, _, status, _)] = cast(RecordingKube, runtime.kube).statuses
    assert "HTTP 404" in status["forecast"]["reason"], "the decision's reason says why"


async def test_a_failed_widening_the_autoscaler_asked_for_is_undone(runtime: handlers.Runtime) -> None:
    failed = [condition_("RescaleFailed", "ElasticEPUnavailable", "the engine has no /scale_elastic_ep (HTTP 404)")]
    calls = await tick(runtime, 4, SLOW_COLD_START_S, failed, **{L.AUTOSCALED_FROM_EXPERT: "2"})
    assert ("patch_spec", {"parallelism": {"expert": 2}}) in calls
    assert ("annotate", {L.AUTOSCALED_FROM_EXPERT: None}) in calls
    assert ("scale", 2) in calls, "the capacity comes as a whole replica instead, in the same tick"
    assert calls.count(("event", "ElasticEPUnavailable")) == 2, "the undo and the replica each say why"


@dataclass
class WantsOne(WantsTwo):
    async def decide(self, key: str, svc: Any, raw: Any, pods: Any, now: float) -> ScalingDecision:
        return ScalingDecision(1, "forecast p90 within one replica's capacity")


async def widened_tick(runtime: handlers.Runtime, engine: str = "vllm") -> list[tuple[str, Any]]:
    """Two replicas the autoscaler widened from EP 2 to EP 4; the autoscaler now wants one."""
    runtime.autoscaler = cast(Autoscaler, WantsOne())
    cached_service(runtime, 4, 2, **{L.AUTOSCALED_FROM_EXPERT: "2"})
    if engine != "vllm":
        body = runtime.cache.llmservices.items()[0]
        runtime.cache.llmservices.apply("MODIFIED", {**body, "spec": {**body["spec"], "engine": {"type": engine}}})
    [first], _ = running_at(4, SLOW_COLD_START_S)
    for replica in (0, 1):
        p = copy.deepcopy(first)
        p["metadata"] |= {"name": f"lite-r{replica}", "namespace": "ns", "resourceVersion": "1"}
        p["metadata"]["labels"][L.REPLICA] = str(replica)
        runtime.cache.pods.apply("ADDED", p)
    await handlers.autoscale("ns", "lite")
    await asyncio.sleep(0)
    return cast(RecordingKube, runtime.kube).calls


async def test_a_widened_service_wanting_less_narrows_back_before_removing_a_replica(
    runtime: handlers.Runtime,
) -> None:
    calls = await widened_tick(runtime)
    assert ("patch_spec", {"parallelism": {"expert": 2}}) in calls
    assert ("annotate", {L.AUTOSCALED_FROM_EXPERT: None}) in calls, "back at the width it was widened from"
    assert not [c for c in calls if c[0] == "scale"], "the replica count stays"
    [(_, _, status, _)] = cast(RecordingKube, runtime.kube).statuses
    assert "narrow expert parallelism EP 4 -> 2" in status["forecast"]["reason"]


async def test_sglang_cannot_narrow_so_the_replica_goes(runtime: handlers.Runtime) -> None:
    calls = await widened_tick(runtime, engine="sglang")
    assert ("scale", 1) in calls and not [c for c in calls if c[0] == "patch_spec"]


async def test_no_replica_goes_while_a_width_change_is_under_way(runtime: handlers.Runtime) -> None:
    runtime.autoscaler = cast(Autoscaler, WantsOne())
    cached_service(runtime, 4, 2, [condition_("Rescaling", "Rescaling", "replica 0: EP 2 -> 4")])
    await handlers.autoscale("ns", "lite")
    calls = cast(RecordingKube, runtime.kube).calls
    assert not [c for c in calls if c[0] in ("scale", "patch_spec")]
    [(_, _, status, _)] = cast(RecordingKube, runtime.kube).statuses
    assert "width change is under way" in status["forecast"]["reason"]
