"""Closed loop: operator + simulated fleet + Redis + load replay through the gateway. A load step arrives and
replicas rise before TTFT breaks the SLO; load falls and replicas drain with zero failed requests."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import numpy as np
from aiohttp import web
from kubernetes import client as kclient
from kubernetes import config as kconfig
from prometheus_client.parser import text_string_to_metric_families

from simulator.loadgen.gateway import Gateway, KubernetesBackends
from simulator.loadgen.replay import ReplayConfig, replay
from simulator.traces import Trace
from tests.integration.conftest import Proc
from tests.kube import Cluster, condition, wait_until

TTFT_SLO = 2.0
SERVICE = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {name: chat}
spec:
  model: {name: llama-3-8b, source: hf://meta-llama/Meta-Llama-3-8B-Instruct, parametersB: 8}
  engine: {type: simulated}
  gpu: {count: 1, types: [L4]}
  replicas: 1
  drainGracePeriodSeconds: 120
  scaling:
    minReplicas: 1
    maxReplicas: 4
    policy: forecast
    scaleDownStabilizationSeconds: 10
    slo: {ttftSeconds: 2.0, interTokenLatencySeconds: 0.1, attainment: 0.99}
"""


def step_trace(seed: int = 7) -> Trace:
    """Poisson arrivals: 1 req/s for 20 s, then 10 req/s for 40 s; 512-token prompts, 64-token answers."""
    rng = np.random.default_rng(seed)
    arrivals: list[float] = []
    for start, end, rate in ((0.0, 20.0, 1.0), (20.0, 60.0, 10.0)):
        t = start
        while True:
            t += rng.exponential(1 / rate)
            if t >= end:
                break
            arrivals.append(t)
    n = len(arrivals)
    return Trace("step", np.array(arrivals), np.full(n, 512, dtype=np.int64), np.full(n, 64, dtype=np.int64), 60.0)


async def run_load(kubeconfig: str, namespace: str, trace: Trace) -> list[Any]:
    api = kclient.CoreV1Api(kconfig.new_client_from_config(config_file=kubeconfig))
    gateway = Gateway(KubernetesBackends("chat", namespace, api), refresh_s=0.5)
    runner = web.AppRunner(gateway.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await asyncio.sleep(1.0)
        return await replay(trace, ReplayConfig(target=f"http://127.0.0.1:{port}", model="llama-3-8b"))
    finally:
        await runner.cleanup()


def cluster_forecast(operator: Proc) -> dict[tuple[str, str], float]:
    """The operator's whole-cluster forecast gauges, by (indicator, quantile)."""
    text = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics").text  # type: ignore[attr-defined]
    return {
        (s.labels["indicator"], s.labels["quantile"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "ebbtide_cluster_forecast"
        for s in family.samples
    }


def test_replicas_rise_ahead_of_slo_breach_and_drain_without_failures(
    cluster: Cluster, ns: str, operator: Proc
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=SERVICE)
    wait_until("1 replica ready", lambda: (cluster.get("llms", "chat", "-n", ns).get("status") or {}).get(
        "readyReplicas") == 1, 90)  # fmt: skip

    replicas_over_time: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def watch_replicas() -> None:
        while not stop.is_set():
            obj = cluster.get("llms", "chat", "-n", ns)
            replicas_over_time.append((time.monotonic() - t0, int(obj["spec"]["replicas"])))
            stop.wait(0.5)

    watcher = threading.Thread(target=watch_replicas, daemon=True)
    watcher.start()
    records = asyncio.run(run_load(str(cluster.kubeconfig), ns, step_trace()))
    load_end = time.monotonic() - t0

    failed = [r for r in records if not r.ok]
    assert not failed, f"{len(failed)} of {len(records)} requests failed, e.g. {failed[0]}"
    scaled_up_at = next((t for t, n in replicas_over_time if n > 1), None)
    assert scaled_up_at is not None, f"never scaled up: {replicas_over_time[-5:]}"
    before = [r.ttft_s for r in records if r.sent_s + r.ttft_s <= scaled_up_at]
    assert before, "no request finished its first token before the scale-up"
    assert float(np.percentile(before, 95)) <= TTFT_SLO, "TTFT broke the SLO before replicas rose"

    obj = cluster.get("llms", "chat", "-n", ns)
    assert obj["status"]["forecast"]["p90"] > 0 and obj["status"]["forecast"]["capacityRps"] > 0
    assert condition(obj, "AutoscalerDegraded")["status"] == "False"  # type: ignore[index]
    # The platform team's view: the whole cluster's demand forecast on the operator's metrics, with this load in it.
    whole = cluster_forecast(operator)
    assert whole[("requests_per_second", "p90")] >= whole[("requests_per_second", "p50")] > 0, whole
    assert whole[("prompt_tokens_per_second", "p50")] > 0, whole

    def back_to_one() -> bool:
        o = cluster.get("llms", "chat", "-n", ns)
        pods = [p for p in cluster.get("pods", "-n", ns)["items"] if not p["metadata"].get("deletionTimestamp")]
        return o["spec"]["replicas"] == 1 and len(pods) == 1

    wait_until("replicas drained back to minReplicas", back_to_one, 120, 1.0)
    stop.set()
    peak = max(n for _, n in replicas_over_time)
    assert peak >= 2 and load_end > scaled_up_at
    reasons = {e["reason"] for e in cluster.get("events", "-n", ns)["items"]}
    assert "Autoscaled" in reasons


def test_retuned_coverage_reaches_the_next_decision(cluster: Cluster, ns: str) -> None:
    tuned = SERVICE.replace("name: chat", "name: tuned").replace(
        "policy: forecast", "policy: forecast\n    forecastCoverage: 0.9"
    )
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=tuned)

    def reason() -> str:
        status = cluster.get("llms", "tuned", "-n", ns).get("status") or {}
        return str((status.get("forecast") or {}).get("reason", ""))

    wait_until("a decision at 90% coverage", lambda: "coverage 90.0%" in reason(), 90)
    patch = '{"spec": {"scaling": {"forecastCoverage": 0.6}}}'
    cluster.kubectl("patch", "-n", ns, "llms/tuned", "--type=merge", "-p", patch)
    wait_until("the next decision at 60% coverage", lambda: "coverage 60.0%" in reason(), 60)


def test_engines_without_metrics_degrade_the_autoscaler_with_the_pod_url_and_status(cluster: Cluster, ns: str) -> None:
    """An engine that answers 404 on /metrics (here the simulated engine as SGLang answers without
    --enable-metrics) is surfaced: a Warning Event naming the pod, its URL and the status, and AutoscalerDegraded
    with reason MetricsUnavailable saying how many engines failed and how. Replicas hold rather than guess."""
    blind = SERVICE.replace("name: chat", "name: blind").replace(
        "engine: {type: simulated}", "engine: {type: simulated, args: [--metric-names, none]}"
    )
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=blind)

    def degraded() -> dict[str, Any] | None:
        # Until the pod is ready there is no engine to ask: the condition says only that metrics are missing.
        cond = condition(cluster.get("llms", "blind", "-n", ns), "AutoscalerDegraded")
        return cond if cond and cond["status"] == "True" and "engines" in cond["message"] else None

    cond = wait_until("AutoscalerDegraded=True naming the engines' failure", degraded, 120)
    assert cond["reason"] == "MetricsUnavailable"
    assert "1/1 engines answered HTTP 404 on /metrics" in cond["message"], cond["message"]
    assert "is --enable-metrics set?" in cond["message"]
    pod = cluster.get("pods", "-n", ns, "-l", "ebbtide.dev/service=blind")["items"][0]
    url = pod["metadata"]["annotations"]["ebbtide.dev/engine-url"] + "/metrics"

    def warning() -> list[dict[str, Any]]:
        events = cluster.get("events", "-n", ns, "--field-selector", "reason=MetricsUnavailable")["items"]
        return [e for e in events if e["type"] == "Warning" and pod["metadata"]["name"] in e["message"]]

    events = wait_until("a MetricsUnavailable Warning naming the pod", warning, 30)
    assert f"GET {url} answered HTTP 404" in events[0]["message"]
    assert cluster.get("llms", "blind", "-n", ns)["spec"]["replicas"] == 1
