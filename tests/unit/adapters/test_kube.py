"""The Kubernetes facade: calls run in its own pool, off the event loop, each counted by verb and resource."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

from kubernetes import client
from prometheus_client import REGISTRY

from adapters.kube import API_THREADS, Kube


def sent(verb: str, resource: str) -> float:
    return REGISTRY.get_sample_value("ebbtide_api_requests_total", {"verb": verb, "resource": resource}) or 0.0


class SlowCore:
    """A client whose pod creation blocks until released, recording the threads it ran on."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: set[str] = set()
        self.waiting = 0
        self.lock = threading.Lock()

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any]) -> None:
        with self.lock:
            self.waiting += 1
            self.threads.add(threading.current_thread().name)
        self.release.wait(5)


async def test_a_burst_of_calls_runs_side_by_side_beyond_asyncios_default_pool() -> None:
    kube = Kube(cast(client.ApiClient, client.ApiClient()))
    core = SlowCore()
    kube.core = cast(client.CoreV1Api, core)
    before = sent("create", "pods")
    burst = 20  # more than asyncio's default pool has threads on a small node (cores + 4)
    calls = [
        asyncio.create_task(kube.create_pod({"metadata": {"name": f"p{i}", "namespace": "ns"}})) for i in range(burst)
    ]
    for _ in range(100):
        await asyncio.sleep(0.02)  # the loop stays free while every call blocks in the pool
        if core.waiting == burst:
            break
    assert core.waiting == burst <= API_THREADS, "every call of the burst is in flight at once"
    core.release.set()
    assert all(await asyncio.gather(*calls))
    assert all(name.startswith("kube-api") for name in core.threads)
    assert sent("create", "pods") - before == burst
