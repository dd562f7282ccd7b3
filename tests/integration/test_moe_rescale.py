"""User story: an MoE service under steady load changes its expert-parallel width in place, EP 2 -> 4 -> 2, on the
local control plane with the simulated fleet; no request through the gateway fails."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

from aiohttp import web
from kubernetes import client as kclient
from kubernetes import config as kconfig

from simulator.loadgen.gateway import Gateway, KubernetesBackends
from simulator.loadgen.replay import ReplayConfig, RequestRecord, replay
from simulator.traces import Trace
from tests.integration.test_llmservice import ready_service, service_pods, steady_trace
from tests.kube import Cluster, condition, wait_until

MODEL = "deepseek-v2-lite"
ELASTIC_MOE = f"""
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {{name: lite}}
spec:
  model:
    name: {MODEL}
    source: hf://deepseek-ai/DeepSeek-V2-Lite
    parametersB: 15.7
    architecture: moe
    experts: 64
    expertsPerToken: 6
    activeParametersB: 2.4
  engine: {{type: simulated, args: ["--time-scale", "10"]}}
  gpu: {{count: 2, types: [H100]}}
  parallelism: {{tensor: 2, expert: 2, elasticExpert: true, maxExpert: 4}}
  replicas: 2
  drainGracePeriodSeconds: 30
  scaling: {{minReplicas: 1, maxReplicas: 2, policy: none}}
"""


async def through_gateway(kubeconfig: str, namespace: str, trace: Trace) -> list[RequestRecord]:
    """Replay `trace` through a gateway that routes to the service's entry pods that are Ready."""
    api = kclient.CoreV1Api(kconfig.new_client_from_config(config_file=kubeconfig))
    gateway = Gateway(KubernetesBackends("lite", namespace, api), refresh_s=0.5)
    runner = web.AppRunner(gateway.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await asyncio.sleep(1.0)
        return await replay(trace, ReplayConfig(target=f"http://127.0.0.1:{port}", model=MODEL))
    finally:
        await runner.cleanup()


def widths(c: Cluster, ns: str) -> dict[str, str]:
    """Entry pod -> the EP width its engine runs at."""
    return {
        p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get("ebbtide.dev/expert-width", "")
        for p in service_pods(c, ns, "lite")
        if p["metadata"]["labels"].get("ebbtide.dev/role") == "server"
    }


def rank_pods(c: Cluster, ns: str) -> list[str]:
    return sorted(
        p["metadata"]["name"]
        for p in service_pods(c, ns, "lite")
        if p["metadata"]["labels"].get("ebbtide.dev/role") == "ep-rank"
    )


def settled(c: Cluster, ns: str, width: int, ranks: int) -> dict[str, Any] | None:
    """The service once both replicas run at `width` with `ranks` joined rank pods, serving, no change under way."""
    obj = ready_service(c, ns, "lite", 2)
    if obj is None or set(widths(c, ns).values()) != {str(width)} or len(rank_pods(c, ns)) != ranks:
        return None
    rescaling = condition(obj, "Rescaling")
    if rescaling is None or rescaling["status"] != "False":
        return None
    entry = [p for p in service_pods(c, ns, "lite") if p["metadata"]["labels"].get("ebbtide.dev/entrypoint")]
    return obj if len(entry) == 2 else None


def test_moe_service_widens_expert_parallelism_in_place_and_back_without_a_failed_request(
    cluster: Cluster, ns: str
) -> None:
    t0 = time.monotonic()
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=ELASTIC_MOE)
    wait_until("2 replicas Ready", lambda: ready_service(cluster, ns, "lite", 2), 60)
    servers = set(widths(cluster, ns))
    assert set(widths(cluster, ns).values()) == {"2"}
    load: dict[str, list[RequestRecord]] = {}
    trace = steady_trace(rate=4.0, seconds=45.0)
    loader = threading.Thread(
        target=lambda: load.update(records=asyncio.run(through_gateway(str(cluster.kubeconfig), ns, trace)))
    )
    loader.start()
    time.sleep(3.0)

    cluster.kubectl("patch", "-n", ns, "llms/lite", "--type=merge", "-p", '{"spec": {"parallelism": {"expert": 4}}}')
    wide = wait_until("both replicas at EP 4", lambda: settled(cluster, ns, 4, 4), 40, 0.5)
    assert len(wide["status"]["expertLayout"]) == 4, "status shows the layout of EP 4"
    assert set(widths(cluster, ns)) == servers, "the replicas resized in place, not replaced"
    cluster.kubectl("patch", "-n", ns, "llms/lite", "--type=merge", "-p", '{"spec": {"parallelism": {"expert": 2}}}')
    narrow = wait_until("both replicas back at EP 2", lambda: settled(cluster, ns, 2, 0), 40, 0.5)
    assert len(narrow["status"]["expertLayout"]) == 2
    assert set(widths(cluster, ns)) == servers
    assert loader.is_alive(), "the load ended before the width changes did: not a change under load"
    loader.join()

    records = load["records"]
    failed = [r for r in records if not r.ok]
    events = cluster.get("events", "-n", ns, "--field-selector", "involvedObject.name=lite")["items"]
    reasons = [e["reason"] for e in events]
    story_s = time.monotonic() - t0
    print(f"\nEP 2 -> 4 -> 2 of 2 replicas: {story_s:.1f}s; {len(records)} requests, {len(failed)} failed")
    assert not failed, f"{len(failed)} of {len(records)} requests failed, e.g. {failed[0]}"
    assert reasons.count("Rescaled") == 4, reasons
    assert not rank_pods(cluster, ns), "the retired rank pods are gone"


def test_moe_service_asked_for_more_capacity_weighs_widening_against_a_replica_and_says_which(
    cluster: Cluster, ns: str
) -> None:
    one = ELASTIC_MOE.replace("replicas: 2\n", "replicas: 1\n").replace("maxExpert: 4", "maxExpert: 8")
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=one)
    wait_until("1 replica Ready", lambda: ready_service(cluster, ns, "lite", 1), 60)
    # The platform team raises the floor: the autoscaler must bring a second replica's worth of capacity online.
    floor = '{"spec": {"scaling": {"policy": "forecast", "minReplicas": 2}}}'
    cluster.kubectl("patch", "-n", ns, "llms/lite", "--type=merge", "-p", floor)
    wait_until("2 replicas Ready", lambda: ready_service(cluster, ns, "lite", 2), 60)

    events = cluster.get("events", "-n", ns, "--field-selector", "involvedObject.name=lite")["items"]
    [grew] = [e["message"] for e in events if e["reason"] == "Autoscaled" and "1 -> 2 replicas" in e["message"]]
    print(f"\n{grew}")
    # This fleet starts a replica in seconds; widening needs a joiner's start and the resize's own phases.
    both = r"widening EP 2 -> \d+ on 1 replica\(s\) ~\d+ s \(\d+ s 503 window each\) vs\. 1 whole replica\(s\) ~\d+ s"
    assert re.search(rf"1 whole replica\(s\) at EP 2: {both}; whole replicas sooner", grew), grew
    assert set(widths(cluster, ns).values()) == {"2"} and not rank_pods(cluster, ns), "nothing widened"


def test_a_widened_moe_service_whose_demand_falls_narrows_in_place_before_a_replica_goes(
    cluster: Cluster, ns: str
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=ELASTIC_MOE)
    wait_until("2 replicas Ready", lambda: ready_service(cluster, ns, "lite", 2), 60)
    servers = set(widths(cluster, ns))
    # Widened earlier as the autoscaler widens: it notes the width it came from, then asks for the new one.
    cluster.kubectl("annotate", "-n", ns, "llms/lite", "ebbtide.dev/autoscaled-from-expert=2")
    cluster.kubectl("patch", "-n", ns, "llms/lite", "--type=merge", "-p", '{"spec": {"parallelism": {"expert": 4}}}')
    wait_until("both replicas at EP 4", lambda: settled(cluster, ns, 4, 4), 40, 0.5)

    # No demand now: the autoscaler takes over with a floor of one replica and no stabilization window.
    idle = '{"spec": {"scaling": {"policy": "forecast", "minReplicas": 1, "scaleDownStabilizationSeconds": 0}}}'
    cluster.kubectl("patch", "-n", ns, "llms/lite", "--type=merge", "-p", idle)

    def one_narrow_replica() -> dict[str, Any] | None:
        obj = ready_service(cluster, ns, "lite", 1)
        if obj is None or set(widths(cluster, ns).values()) != {"2"} or rank_pods(cluster, ns):
            return None
        return obj if len(widths(cluster, ns)) == 1 else None

    final = wait_until("one replica left, at EP 2", one_narrow_replica, 120, 0.5)
    events = cluster.get("events", "-n", ns, "--field-selector", "involvedObject.name=lite")["items"]
    messages = [e["message"] for e in events if e["reason"] == "Autoscaled"]
    print("\n" + "\n".join(messages))
    assert any("narrow expert parallelism EP 4 -> 2 on 2 replica(s)" in m for m in messages), messages
    assert any("2 -> 1 replicas" in m for m in messages), messages
    rescaled = [e for e in events if e["reason"] == "Rescaled"]
    assert len(rescaled) == 4, "both replicas widened, then both narrowed in place before either went"
    assert set(widths(cluster, ns)) <= servers, "the replica left is one that resized in place"
    assert "ebbtide.dev/autoscaled-from-expert" not in (final["metadata"].get("annotations") or {})
