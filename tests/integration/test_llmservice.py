"""User stories of LLMService against the real local control plane, operator and simulated fleet."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from kubernetes import client as kclient
from kubernetes import config as kconfig

from adapters.kube import FieldManager, Kube, load_config
from autoscaler.types import ScalingDecision
from controllers.planners.llmservice import plan_service
from controllers.planners.snapshot import pod_view
from controllers.shells.autoscaling import decision_status
from crds.llmservice import LLMService
from simulator.loadgen.gateway import Gateway, KubernetesBackends
from simulator.loadgen.replay import ReplayConfig, RequestRecord, replay
from simulator.traces import Trace
from tests.integration.conftest import Proc
from tests.kube import (
    ROOT,
    SCENARIOS,
    Cluster,
    condition,
    expected_field,
    invalid_scenarios,
    semantic_reasons_reported,
    wait_until,
)

EXAMPLES = ROOT / "examples"


def service_pods(c: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = c.get("pods", "-n", ns, "-l", f"ebbtide.dev/service={name}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready_service(c: Cluster, ns: str, name: str, replicas: int) -> dict[str, Any] | None:
    obj: dict[str, Any] = c.get("llms", name, "-n", ns)
    ready = condition(obj, "Ready")
    st = obj.get("status") or {}
    if ready and ready["status"] == "True" and st.get("readyReplicas") == replicas and st.get("replicas") == replicas:
        return obj
    return None


def test_applied_service_gets_bound_running_pods_and_becomes_ready(cluster: Cluster, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "dense-service.yaml"))

    obj = wait_until("llama3-8b Ready with 2 replicas", lambda: ready_service(cluster, ns, "llama3-8b", 2), 90)

    pods = service_pods(cluster, ns, "llama3-8b")
    assert len(pods) == 2
    for p in pods:
        assert p["spec"]["nodeName"].startswith("gpu-h100-"), "GPU type restriction must hold"
        assert p["status"]["phase"] == "Running"
        assert p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert p["spec"]["priorityClassName"] == "ebbtide-serving-high"
        assert p["metadata"]["ownerReferences"][0]["kind"] == "LLMService"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    row = cluster.kubectl("get", "llms", "llama3-8b", "-n", ns, "--no-headers").stdout.split()
    assert row[:4] == ["llama3-8b", "llama-3-8b", "2/2", "2"], row
    assert "Ready" in row
    assert cluster.exists("service", "llama3-8b", "-n", ns)
    assert cluster.get("pdb", "llama3-8b", "-n", ns)["spec"]["minAvailable"] == 1

    # The simulated engine behind the pod answers like vLLM, and its node exports DCGM metrics.
    import httpx

    url = pods[0]["metadata"]["annotations"]["ebbtide.dev/engine-url"]
    reply = httpx.post(
        f"{url}/v1/completions", json={"model": "llama-3-8b", "prompt": "hello", "max_tokens": 8}, timeout=30
    ).json()
    assert reply["usage"]["completion_tokens"] == 8
    node = cluster.get("node", pods[0]["spec"]["nodeName"])
    dcgm = httpx.get(node["metadata"]["annotations"]["ebbtide.dev/dcgm-url"] + "/metrics").text
    assert f'pod="{pods[0]["metadata"]["name"]}"' in dcgm and "DCGM_FI_DEV_POWER_USAGE" in dcgm


def test_kubectl_scale_adds_gangs_then_removes_newest_first(cluster: Cluster, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "dense-service.yaml"))
    cluster.kubectl("scale", "-n", ns, "llms/llama3-8b", "--replicas=1")
    wait_until("1 replica", lambda: ready_service(cluster, ns, "llama3-8b", 1), 90)
    wait_until("the drained replica gone", lambda: len(service_pods(cluster, ns, "llama3-8b")) == 1, 60)
    first = {p["metadata"]["name"] for p in service_pods(cluster, ns, "llama3-8b")}

    cluster.kubectl("scale", "-n", ns, "llms/llama3-8b", "--replicas=3")
    wait_until("3 replicas", lambda: ready_service(cluster, ns, "llama3-8b", 3), 90)
    names = {p["metadata"]["name"] for p in service_pods(cluster, ns, "llama3-8b")}
    assert len(names) == 3 and first <= names

    cluster.kubectl("scale", "-n", ns, "llms/llama3-8b", "--replicas=1")
    wait_until("back to 1", lambda: ready_service(cluster, ns, "llama3-8b", 1), 90)
    wait_until("drained pods gone", lambda: len(service_pods(cluster, ns, "llama3-8b")) == 1, 60)
    assert {p["metadata"]["name"] for p in service_pods(cluster, ns, "llama3-8b")} == first
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", "reason=ScalingDown").stdout
    assert "draining replica" in events


@pytest.mark.parametrize("path", invalid_scenarios(), ids=lambda p: p.stem)
def test_invalid_spec_is_rejected_naming_the_field(cluster: Cluster, path: Path) -> None:
    field = expected_field(path)
    proc = cluster.kubectl("apply", "-n", "default", "-f", str(path), check=False)
    assert proc.returncode != 0, f"{path.name} was accepted"
    assert field in proc.stderr, proc.stderr


def test_impossible_spec_reports_ready_false_and_others_still_reconcile(cluster: Cluster, ns: str) -> None:
    for path in sorted((SCENARIOS / "semantic").glob("*.yaml")):
        cluster.kubectl("apply", "-n", ns, "-f", str(path))

    wait_until("Ready=False with reasons", lambda: semantic_reasons_reported(cluster, ns), 60)
    msg = condition(cluster.get("llms", "too-big", "-n", ns), "Ready")["message"]  # type: ignore[index]
    assert "spec.model.parametersB" in msg
    events = cluster.get("events", "-n", ns, "--field-selector", "reason=ModelDoesNotFit")["items"]
    assert events and events[0]["type"] == "Warning"
    assert service_pods(cluster, ns, "too-big") == []

    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "dense-service.yaml"))
    wait_until("the valid service still becomes Ready", lambda: ready_service(cluster, ns, "llama3-8b", 2), 90)


def test_delete_garbage_collects_everything(cluster: Cluster, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "pd-service.yaml"))
    wait_until("prefill/decode replica Ready", lambda: ready_service(cluster, ns, "qwen-pd", 1), 90)
    roles = sorted(p["metadata"]["labels"]["ebbtide.dev/role"] for p in service_pods(cluster, ns, "qwen-pd"))
    assert roles == ["decode", "decode", "prefill"]

    cluster.kubectl("delete", "llms", "qwen-pd", "-n", ns)

    def gone() -> bool:
        return (
            not service_pods(cluster, ns, "qwen-pd")
            and not cluster.exists("service", "qwen-pd", "-n", ns)
            and not cluster.exists("pdb", "qwen-pd", "-n", ns)
        )

    wait_until("pods, services and PDB garbage-collected", gone, 90)


def test_operator_killed_mid_reconcile_converges_without_duplicates(cluster: Cluster, ns: str, operator: Proc) -> None:
    manifest = (EXAMPLES / "dense-service.yaml").read_text().replace("replicas: 2 ", "replicas: 4 ")
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=manifest)
    wait_until("reconcile under way", lambda: len(service_pods(cluster, ns, "llama3-8b")) >= 1, 30, 0.05)
    operator.kill()
    operator.start()

    wait_until("4 replicas Ready after restart", lambda: ready_service(cluster, ns, "llama3-8b", 4), 120)
    pods = service_pods(cluster, ns, "llama3-8b")
    replicas = sorted(p["metadata"]["labels"]["ebbtide.dev/replica"] for p in pods)
    assert replicas == ["0", "1", "2", "3"], replicas


def test_operator_serves_metrics_and_health(operator: Proc, ns: str) -> None:
    import httpx

    metrics = wait_until(
        "metrics",
        lambda: httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics").text,
        30,  # type: ignore[attr-defined]
    )
    assert "ebbtide_reconciles_total" in metrics
    health = httpx.get(f"http://127.0.0.1:{operator.health_port}/healthz")  # type: ignore[attr-defined]
    assert health.status_code == 200
    json.loads(health.text or "{}")


def owned_conditions(obj: dict[str, Any], manager: str) -> set[str]:
    """The condition types a field manager owns in the object's status (from metadata.managedFields)."""
    owned: set[str] = set()
    for entry in obj["metadata"].get("managedFields", []):
        if entry["manager"] == manager and entry.get("subresource") == "status":
            conditions = ((entry.get("fieldsV1") or {}).get("f:status") or {}).get("f:conditions") or {}
            owned |= {json.loads(k[2:])["type"] for k in conditions if k.startswith("k:")}
    return owned


def test_the_autoscalers_and_the_reconcilers_conditions_survive_each_other(cluster: Cluster, ns: str) -> None:
    manifest = (EXAMPLES / "dense-service.yaml").read_text()
    manifest = manifest.replace("replicas: 2 ", "replicas: 1 ").replace("maxReplicas: 4", "maxReplicas: 1")
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=manifest.replace("policy: none ", "policy: forecast "))
    reconciler = {"Ready", "Progressing", "Degraded"}
    autoscaler = {"AutoscalerDegraded"}

    def both_written() -> dict[str, Any] | None:
        obj: dict[str, Any] = cluster.get("llms", "llama3-8b", "-n", ns)
        have = {c["type"] for c in (obj.get("status") or {}).get("conditions", [])}
        return obj if reconciler | autoscaler <= have else None

    wait_until("both writers' conditions", both_written, 90)
    obj = cluster.get("llms", "llama3-8b", "-n", ns, "--show-managed-fields")
    assert reconciler <= owned_conditions(obj, FieldManager.RECONCILER)
    assert autoscaler <= owned_conditions(obj, FieldManager.AUTOSCALER)
    assert not owned_conditions(obj, FieldManager.RECONCILER) & owned_conditions(obj, FieldManager.AUTOSCALER)

    # Each writer now applies what it would compute from a stale read that never saw the other's conditions:
    # with one merge-patched list this erased the other's; with one field manager each, it cannot.
    stale = LLMService.model_validate({**obj, "status": {}})
    pods = [pod_view(p) for p in service_pods(cluster, ns, "llama3-8b")]
    kube = Kube(load_config(str(cluster.kubeconfig)))
    asyncio.run(
        kube.apply_status(
            "llmservices", ns, "llama3-8b", decision_status({}, ScalingDecision(1, "stale"), 0.0, 1),
            FieldManager.AUTOSCALER,
        )
    )  # fmt: skip
    after = {c["type"] for c in cluster.get("llms", "llama3-8b", "-n", ns)["status"]["conditions"]}
    assert reconciler <= after, f"the autoscaler's write erased the reconciler's conditions: {after}"
    status = plan_service(stale, obj["metadata"]["uid"], pods, set(), 0.0).status
    asyncio.run(kube.apply_status("llmservices", ns, "llama3-8b", status, FieldManager.RECONCILER))
    after = {c["type"] for c in cluster.get("llms", "llama3-8b", "-n", ns)["status"]["conditions"]}
    assert autoscaler <= after, f"the reconciler's write erased the autoscaler's conditions: {after}"


ROLLING = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {name: chat}
spec:
  model: {name: llama-3-8b, source: hf://meta-llama/Meta-Llama-3-8B-Instruct, parametersB: 8}
  engine: {type: simulated}
  gpu: {count: 1, types: [H100]}
  replicas: 3
  drainGracePeriodSeconds: 60
  scaling: {minReplicas: 1, maxReplicas: 3, policy: none}
"""


def steady_trace(rate: float, seconds: float, seed: int = 11) -> Trace:
    """Poisson arrivals at `rate` req/s for `seconds`; 256-token prompts, 32-token answers."""
    gaps = np.random.default_rng(seed).exponential(1 / rate, int(rate * seconds * 2))
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < seconds]
    n = len(arrivals)
    return Trace("steady", arrivals, np.full(n, 256, dtype=np.int64), np.full(n, 32, dtype=np.int64), seconds)


async def through_gateway(kubeconfig: str, namespace: str, service: str, trace: Trace) -> list[RequestRecord]:
    """Replay `trace` through a gateway that routes to the service's Ready, non-draining pods."""
    api = kclient.CoreV1Api(kconfig.new_client_from_config(config_file=kubeconfig))
    gateway = Gateway(KubernetesBackends(service, namespace, api), refresh_s=0.5)
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


def test_changed_engine_args_roll_every_gang_one_at_a_time_without_a_failed_request(cluster: Cluster, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=ROLLING)
    wait_until("3 replicas Ready", lambda: ready_service(cluster, ns, "chat", 3), 90)
    before = {p["metadata"]["name"]: p["metadata"]["labels"]["ebbtide.dev/template-hash"] for p in
              service_pods(cluster, ns, "chat")}  # fmt: skip
    load: dict[str, list[RequestRecord]] = {}
    trace = steady_trace(rate=4.0, seconds=60.0)
    loader = threading.Thread(
        target=lambda: load.update(records=asyncio.run(through_gateway(str(cluster.kubeconfig), ns, "chat", trace)))
    )
    loader.start()
    time.sleep(5.0)

    t0 = time.monotonic()
    args = '{"spec": {"engine": {"args": ["--max-num-seqs", "128"]}}}'
    cluster.kubectl("patch", "-n", ns, "llms/chat", "--type=merge", "-p", args)
    serving: list[int] = []  # gangs Ready and in routing, sampled through the roll

    def rolled() -> bool:
        pods = service_pods(cluster, ns, "chat")
        serving.append(sum(1 for p in pods if ready_pod(p) and "ebbtide.dev/drain-started" not in annotations(p)))
        fresh = [p for p in pods if p["metadata"]["name"] not in before and ready_pod(p)]
        return len(pods) == 3 and len(fresh) == 3 and bool(ready_service(cluster, ns, "chat", 3))

    wait_until("every gang replaced", rolled, 150, 0.5)
    roll_s = time.monotonic() - t0
    assert loader.is_alive(), f"the load ended before the roll did ({roll_s:.0f}s): not a roll under load"
    loader.join()

    records = load["records"]
    failed = [r for r in records if not r.ok]
    print(f"\nroll of 3 gangs: {roll_s:.1f}s; {len(records)} requests, {len(failed)} failed")
    assert not failed, f"{len(failed)} of {len(records)} requests failed, e.g. {failed[0]}"
    assert min(serving) >= 2, f"more than one gang out of routing at once: {serving}"
    new_hash = {p["metadata"]["labels"]["ebbtide.dev/template-hash"] for p in service_pods(cluster, ns, "chat")}
    assert len(new_hash) == 1 and new_hash.isdisjoint(before.values())
    for p in service_pods(cluster, ns, "chat"):
        assert p["spec"]["containers"][0]["args"][-2:] == ["--max-num-seqs", "128"]
    rolled_events = cluster.get("events", "-n", ns, "--field-selector", "reason=RollingUpdate")["items"]
    assert len(rolled_events) == 3, [e["message"] for e in rolled_events]
    status = cluster.get("llms", "chat", "-n", ns)["status"]
    assert status["updatedReplicas"] == 3 and condition({"status": status}, "Progressing")["reason"] == "Converged"  # type: ignore[index]


SCALE_IN = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {name: NAME}
spec:
  model: {name: llama-3-8b, source: hf://meta-llama/Meta-Llama-3-8B-Instruct, parametersB: 8}
  engine: {type: simulated, args: ARGS}
  gpu: {count: 1, types: [H100]}
  replicas: 3
  drainGracePeriodSeconds: 60
  scaling: {minReplicas: 1, maxReplicas: 3, policy: none}
"""


def long_trace(rate: float, seconds: float, output_tokens: int, seed: int = 5) -> Trace:
    """Poisson arrivals of requests long enough (about 7 s of decode) to be in flight when a gang is deleted."""
    base = steady_trace(rate, seconds, seed)
    return Trace("long", base.arrival_s, base.prompt_tokens, np.full(len(base), output_tokens, np.int64), seconds)


@pytest.mark.parametrize(
    ("name", "args", "loses_requests"),
    [("drained", "[]", False), ("aborted", '["--shutdown-timeout", "0"]', True)],
    ids=["shutdown-timeout-from-the-drain-grace", "shutdown-timeout-0"],
)
def test_scale_in_under_load_drops_no_request_only_because_engines_drain_on_sigterm(
    cluster: Cluster, ns: str, name: str, args: str, loses_requests: bool
) -> None:
    """Scale-in takes gangs out of routing, waits for routers, then deletes them; the engines' own graceful
    shutdown finishes what is in flight. The same scale-in of engines that abort at SIGTERM (vLLM's default)
    loses requests, so routing removal alone is not what saves them."""
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=SCALE_IN.replace("NAME", name).replace("ARGS", args))
    wait_until("3 replicas Ready", lambda: ready_service(cluster, ns, name, 3), 90)
    load: dict[str, list[RequestRecord]] = {}
    trace = long_trace(rate=1.5, seconds=24.0, output_tokens=1000)
    loader = threading.Thread(
        target=lambda: load.update(records=asyncio.run(through_gateway(str(cluster.kubeconfig), ns, name, trace)))
    )
    loader.start()
    time.sleep(12.0)  # every gang has requests in flight
    cluster.kubectl("scale", "-n", ns, f"llms/{name}", "--replicas=1")
    wait_until("the drained gangs deleted", lambda: len(service_pods(cluster, ns, name)) == 1, 60, 0.5)
    loader.join()
    records = load["records"]
    failed = [r for r in records if not r.ok]
    print(f"\nscale-in 3->1 ({name}): {len(records)} requests, {len(failed)} failed")
    assert len(records) == len(trace)
    if loses_requests:
        assert failed and all(r.error == "aborted by the engine" for r in failed), failed[:3]
    else:
        assert not failed, f"{len(failed)} of {len(records)} requests failed, e.g. {failed[0]}"


def ready_pod(p: dict[str, Any]) -> bool:
    conditions = (p.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def annotations(p: dict[str, Any]) -> dict[str, str]:
    return p["metadata"].get("annotations") or {}
