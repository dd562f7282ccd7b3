"""The packer's shell over the watch-fed cache: it reads no API on an idle pass, runs when an event can change a
placement (not on a clock), binds only on the leader, and never binds twice before the cache shows its binding."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from adapters.cache import ClusterCache
from adapters.kube import Kube
from controllers.shells.scheduling import Scheduler
from crds import labels as L
from tests.unit.controllers.builders import RecordingKube, gang_pod, gpu_node


def setup(leader: bool = True, resync_s: float = 3600.0) -> tuple[Scheduler, ClusterCache, RecordingKube]:
    kube = RecordingKube()
    cache = ClusterCache(cast(Kube, kube))
    for informer in cache.informers():
        informer.replace([])
    scheduler = Scheduler(
        cast(Kube, kube), cache, leader=lambda: leader, resync_s=resync_s, debounce_s=0.01, min_interval_s=0.0
    )
    return scheduler, cache, kube


def waiting(name: str, gpus: int = 1) -> dict[str, Any]:
    p = gang_pod(name, name, gpus, **{L.SERVICE: "svc"})
    p["metadata"]["uid"] = f"uid-{name}"
    return p


async def test_an_idle_pass_calls_no_api_at_all() -> None:
    scheduler, cache, kube = setup()
    cache.nodes.replace([gpu_node("n1")])
    cache.pods.replace([gang_pod("busy", "busy", 4, "n1")])

    assert await scheduler.pass_once() is None
    assert kube.calls == []


async def test_a_bound_gang_is_assumed_until_the_cache_shows_it_so_no_gpu_is_booked_twice() -> None:
    scheduler, cache, kube = setup()
    cache.nodes.replace([gpu_node("n1", gpus=1)])
    cache.pods.apply("ADDED", waiting("a"))

    await scheduler.pass_once()
    assert kube.bound() == [("a", "n1")]

    # A second gang arrives before the cache has seen a's binding: a still holds the only GPU.
    cache.pods.apply("ADDED", waiting("b"))
    await scheduler.pass_once()
    assert kube.bound() == [("a", "n1")], "a is not bound again, and b does not get a's GPU"
    assert ("unschedulable", "b") in kube.calls

    # Once the binding shows and a's pod is deleted, its GPU is free for b.
    bound_a = {**waiting("a"), "spec": {**waiting("a")["spec"], "nodeName": "n1"}}
    cache.pods.apply("MODIFIED", bound_a)
    cache.pods.apply("DELETED", bound_a)
    await scheduler.pass_once()
    assert kube.bound() == [("a", "n1"), ("b", "n1")]


async def test_events_that_can_change_a_placement_wake_the_packer_and_heartbeats_do_not() -> None:
    scheduler, cache, kube = setup()
    cache.nodes.replace([gpu_node("n1")])
    scheduler.listen()
    task = asyncio.get_running_loop().create_task(scheduler.run_forever())
    try:
        beat = gpu_node("n1")
        beat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:10Z"
        cache.nodes.apply("MODIFIED", beat)
        running = gang_pod("busy", "busy", 1, "n1")
        cache.pods.apply("ADDED", running)
        await asyncio.sleep(0.1)
        assert scheduler.passes == 1, "a pod that takes capacity wakes the packer"
        cache.pods.apply("MODIFIED", {**running, "status": {"phase": "Running", "podIP": "10.0.0.1"}})
        await asyncio.sleep(0.1)
        assert scheduler.passes == 1, "a heartbeat or a running pod's status changes nothing the packer reads"

        cache.pods.apply("ADDED", waiting("a"))
        cache.pods.apply("ADDED", waiting("b"))
        await asyncio.sleep(0.1)
        assert scheduler.passes == 2, "one pass for a burst of events"
        assert sorted(kube.bound()) == [("a", "n1"), ("b", "n1")]
    finally:
        task.cancel()


async def test_a_standby_replica_keeps_its_cache_but_binds_nothing() -> None:
    scheduler, cache, kube = setup(leader=False)
    cache.nodes.replace([gpu_node("n1")])
    scheduler.listen()
    task = asyncio.get_running_loop().create_task(scheduler.run_forever())
    try:
        cache.pods.apply("ADDED", waiting("a"))
        await asyncio.sleep(0.1)
    finally:
        task.cancel()
    assert scheduler.passes == 0 and kube.calls == []
    assert cache.pods.by_index("unscheduled", "ebbtide-packer"), "the pod is still waiting, for the leader"


async def test_without_events_the_safety_resync_still_runs_a_pass() -> None:
    scheduler, _, kube = setup(resync_s=0.05)
    task = asyncio.get_running_loop().create_task(scheduler.run_forever())
    try:
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
    assert scheduler.passes >= 2 and kube.calls == [], "idle resync passes, and they cost no API call"


async def test_a_busy_cluster_costs_at_most_one_pass_per_interval() -> None:
    scheduler, cache, _ = setup()
    scheduler.min_interval_s = 0.2
    cache.nodes.replace([gpu_node("n1", gpus=0)])
    scheduler.listen()
    task = asyncio.get_running_loop().create_task(scheduler.run_forever())
    started = time.monotonic()
    try:
        for i in range(50):  # gangs that never fit keep arriving
            cache.pods.apply("ADDED", waiting(f"p{i}"))
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    elapsed = time.monotonic() - started
    assert 2 <= scheduler.passes <= elapsed / 0.2 + 1, (scheduler.passes, elapsed)


async def test_a_binding_carries_the_gpu_indices_and_product_in_one_write() -> None:
    scheduler, cache, kube = setup()
    cache.nodes.replace([gpu_node("n1", gpus=2)])
    cache.pods.apply("ADDED", waiting("a", gpus=2))

    await scheduler.pass_once()
    assert kube.bound() == [("a", "n1")]
    assert kube.bind_annotations["a"] == {"ebbtide.dev/gpu-indices": "0,1", L.GPU_PRODUCT: "NVIDIA-L4"}
    assert not [c for c in kube.calls if c[0] == "patch_pod"], "no separate annotation write before the binding"


async def test_no_binding_waits_behind_the_writes_for_a_gang_that_stays_pending() -> None:
    gate = asyncio.Event()

    class SlowStatus(RecordingKube):
        async def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
            await gate.wait()  # an API server slow to take the Unschedulable condition
            await super().patch_pod_status(namespace, name, status)

    kube = SlowStatus()
    cache = ClusterCache(cast(Kube, kube))
    for informer in cache.informers():
        informer.replace([])
    scheduler = Scheduler(cast(Kube, kube), cache, resync_s=3600.0, debounce_s=0.01, min_interval_s=0.0)
    cache.nodes.replace([gpu_node("n1", gpus=1)])
    for name in ("big-a", "big-b"):
        cache.pods.apply("ADDED", waiting(name, gpus=2))  # never fits on one GPU
    cache.pods.apply("ADDED", waiting("small"))

    passing = asyncio.create_task(scheduler.pass_once())
    for _ in range(100):
        await asyncio.sleep(0.01)
        if kube.bound():
            break
    assert kube.bound() == [("small", "n1")], "bound while the pending gangs' writes still wait"
    gate.set()
    await passing
    assert ("unschedulable", "big-a") in kube.calls and ("unschedulable", "big-b") in kube.calls
