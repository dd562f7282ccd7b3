"""The autoscaler reads the real vLLM's /metrics: a steady load through the gateway takes the service from one
replica to three, and when the load stops it drains back to one, with no request failed on the way."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.conformance.engines import RealEngineEnv
from tests.kube import Cluster, wait_until
from tests.realengine.stories import READY_TIMEOUT_S, failures, gateway, note, service_yaml, steady_load

# Real servers start in minutes on a loaded 2-core machine: the stories outlast the suite's 300 s default.
pytestmark = [pytest.mark.realengine, pytest.mark.timeout(1800)]

# The reactive policy against the catalogue's profile of the tiny model on an L4 (about 340 requests/s a replica):
# at 0.5% target utilisation a replica is "full" at about 1.7 requests/s, so 4 requests/s asks for three replicas.
# The load stays light: the CPU it takes from the two servers starting alongside slows their start.
SCALING = (
    "{policy: reactive, targetUtilization: 0.005, minReplicas: 1, maxReplicas: 3, scaleDownStabilizationSeconds: 10}"
)
RATE = 4.0


def test_the_autoscaler_scales_real_engines_one_to_three_under_load_and_back(
    cluster: Cluster, ns: str, real_engine_env: RealEngineEnv
) -> None:
    cluster.kubectl(
        "apply", "-n", ns, "-f", "-", stdin=service_yaml(real_engine_env, "auto", scaling=SCALING, drain_grace_s=20)
    )

    def ready_replicas() -> int:
        return int((cluster.get("llms", "auto", "-n", ns).get("status") or {}).get("readyReplicas") or 0)

    t0 = time.monotonic()
    wait_until("one vLLM replica Ready", lambda: ready_replicas() == 1, READY_TIMEOUT_S, 1.0)
    note("apply to Ready, 1 real vLLM replica (autoscaling story)", time.monotonic() - t0)

    stop = threading.Event()
    with gateway(cluster.kubeconfig, ns, "auto") as (url, loop):
        wait_until("the gateway routes", lambda: httpx.get(f"{url}/healthz").json()["backends"], 30)
        load = asyncio.run_coroutine_threadsafe(steady_load(url, RATE, stop, max_tokens=16), loop)
        t1 = time.monotonic()
        try:
            wait_until("the autoscaler asks for 3 replicas", lambda: _spec_replicas(cluster, ns) == 3, 180, 1.0)
            note("load start to spec.replicas 3 (real /metrics scraped)", time.monotonic() - t1)
            wait_until("3 vLLM replicas Ready", lambda: ready_replicas() == 3, 2 * READY_TIMEOUT_S, 1.0)
            note("load start to 3 real vLLM replicas Ready", time.monotonic() - t1)
            backends = httpx.get(f"{url}/gateway/backends").json()
            wait_until("the gateway routes to all three", lambda: len(httpx.get(f"{url}/gateway/backends").json()) == 3)
        finally:
            stop.set()
            outcomes = load.result(300)
    assert outcomes and all(o.ok for o in outcomes), failures(outcomes)
    assert len(backends) >= 2

    t2 = time.monotonic()

    def back_to_one() -> bool:
        pods = [p for p in cluster.get("pods", "-n", ns)["items"] if not p["metadata"].get("deletionTimestamp")]
        return _spec_replicas(cluster, ns) == 1 and len(pods) == 1

    wait_until("scaled back to minReplicas", back_to_one, 180, 1.0)
    note("load stop to 1 replica", time.monotonic() - t2)
    reasons = {e["reason"] for e in cluster.get("events", "-n", ns)["items"]}
    assert "Autoscaled" in reasons


def _spec_replicas(cluster: Cluster, ns: str) -> int:
    return int(cluster.get("llms", "auto", "-n", ns)["spec"]["replicas"])
