"""The chart installed with Helm runs for real: its operator and Redis in pods on a real node, the GPU workloads on
KWOK nodes. The e2e scenarios and the preemption story run against it unchanged (imported from tests/e2e and
tests/integration), then operator failover, then uninstall."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

import httpx
import pytest
import redis

from adapters.nvml import CAPS_ANNOTATION, ENFORCED_ANNOTATION
from tests.e2e.test_scenarios import (  # noqa: F401  (collected here, against the chart's operator)
    test_dense_service_becomes_ready_and_scales_with_kubectl,
    test_finetune_job_runs_to_success,
    test_impossible_specs_report_ready_false_with_a_reason,
    test_invalid_spec_is_rejected_naming_the_field,
    test_power_budget_reports_its_domain,
)
from tests.helmchart import CHART, helm
from tests.integration.conftest import RUN
from tests.integration.test_peering import BOUND_GANGS, SERVICE, gpus_booked_once, placed
from tests.integration.test_preemption import (  # noqa: F401
    test_high_priority_service_preempts_job_after_checkpoint_and_job_resumes,
)
from tests.kube import ROOT, Cluster, condition, wait_until
from tests.realnode.conftest import (
    AGENT_NAMESPACE,
    NAMESPACE,
    PEERING_LIFETIME_S,
    REDIS_CLUSTER_IP,
    RELEASE,
    leader,
    operator_pods,
)

AUTOSCALED = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {name: remembered}
spec:
  model: {name: llama-3-8b, source: hf://meta-llama/Meta-Llama-3-8B-Instruct, parametersB: 8}
  engine: {type: simulated}
  gpu: {count: 1, types: [H100]}
  replicas: 1
  scaling:
    minReplicas: 1
    maxReplicas: 2
    policy: forecast
    slo: {ttftSeconds: 2.0, interTokenLatencySeconds: 0.1}
"""


def pod(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get("pod", name, "-n", NAMESPACE)  # type: ignore[no-any-return]


def bound_gangs(cluster: Cluster, name: str) -> float:
    """Gangs one operator pod has bound, from its /metrics (the host reaches pod IPs over the node's bridge)."""
    text = httpx.get(f"http://{pod(cluster, name)['status']['podIP']}:8080/metrics", timeout=5).text
    found = BOUND_GANGS.search(text)
    return float(found.group(1)) if found else 0.0


def test_operator_replicas_run_on_the_real_node_and_reach_the_api_server_in_cluster(
    live: Cluster, node: dict[str, Any]
) -> None:
    pods = operator_pods(live)
    assert len(pods) == 2
    for p in pods:
        assert p["spec"]["nodeName"] == node["node"]
        assert all(c["ready"] and c["restartCount"] == 0 for c in p["status"]["containerStatuses"]), p["status"]
    # Through the `kubernetes` Service (10.96.0.1): the pods have no kubeconfig, only the in-cluster config.
    logs = live.kubectl("logs", "-n", NAMESPACE, pods[0]["metadata"]["name"]).stdout
    assert "Traceback" not in logs, logs[-2000:]
    # Nothing else may land on the real node: GPU pods go to KWOK nodes, and other pods lack the taint's toleration.
    node_obj = live.get("node", node["node"])
    assert {"key": node["taint"], "value": "true", "effect": "NoSchedule"} in node_obj["spec"]["taints"]


def test_the_bundled_redis_runs_and_answers_through_its_service(live: Cluster, node: dict[str, Any]) -> None:
    wait_until(
        "Redis Ready",
        lambda: (
            live.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=redis")["items"][0]["status"]
            .get("containerStatuses", [{}])[0]
            .get("ready")
        ),
        120,
    )
    redis_pod = live.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=redis")["items"][0]
    assert redis_pod["spec"]["nodeName"] == node["node"]
    ip = live.get("service", f"{RELEASE}-redis", "-n", NAMESPACE)["spec"]["clusterIP"]
    assert ip == REDIS_CLUSTER_IP

    def ping() -> bool:
        # The ClusterIP is routed by kube-proxy's rules a moment after the Service appears.
        try:
            with socket.create_connection((ip, 6379), timeout=3) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16) == b"+PONG\r\n"
        except OSError:
            return False

    wait_until("PONG through the Service's ClusterIP", ping, 30)


def test_the_operator_keeps_an_autoscaled_services_history_in_the_bundled_redis(live: Cluster, ns: str) -> None:
    env = {e["name"]: e.get("value") for e in operator_pods(live)[0]["spec"]["containers"][0]["env"]}
    assert env["EBBTIDE_REDIS_URL"] == f"redis://{REDIS_CLUSTER_IP}:6379/0"
    live.kubectl("apply", "-n", ns, "-f", "-", stdin=AUTOSCALED)
    store = redis.Redis(host=REDIS_CLUSTER_IP, port=6379, socket_timeout=5, decode_responses=True)

    def series() -> dict[str, int]:
        # The history store's per-indicator sorted sets (adapters/store.py), one member per observation.
        try:
            return {k: int(store.zcard(k)) for k in store.scan_iter(match=f"*:hist:{ns}/remembered:*")}
        except redis.ConnectionError:
            return {}

    # The first scrape only sets the baseline; the ticks after it append, so two points mean the operator writes on.
    wait_until("two observations of the service in Redis", lambda: max(series().values(), default=0) >= 2, 180)
    index = list(store.scan_iter(match=f"*:keys:{ns}/remembered"))
    assert len(index) == 1 and set(series()) <= set(store.smembers(index[0])), index
    degraded = condition(live.get("llms", "remembered", "-n", ns), "AutoscalerDegraded") or {}
    assert degraded.get("reason") != "HistoryUnavailable", degraded
    for p in operator_pods(live):
        logs = live.kubectl("logs", "-n", NAMESPACE, p["metadata"]["name"]).stdout
        assert f"history store unavailable for {ns}/remembered" not in logs
    print(f"\nthe operator's history in Redis at {REDIS_CLUSTER_IP}: {series()}")


def test_the_node_agent_runs_on_the_real_node_with_the_stated_privileges_and_says_it_has_no_nvml(
    live: Cluster, node: dict[str, Any]
) -> None:
    def agent() -> dict[str, Any] | None:
        pods = live.get("pods", "-n", AGENT_NAMESPACE, "-l", "app.kubernetes.io/component=node-agent")["items"]
        return pods[0] if pods else None

    def terminated() -> dict[str, Any] | None:
        p = agent()
        for s in (p or {}).get("status", {}).get("containerStatuses", []):
            state = s.get("lastState", {}).get("terminated") or s.get("state", {}).get("terminated")
            if state:
                return state  # type: ignore[no-any-return]
        return None

    # The DaemonSet's one pod, admitted by the privileged namespace and placed on the real node only.
    pod = wait_until("the node agent's pod", agent, 60)
    assert pod["spec"]["nodeName"] == node["node"]
    ctx = pod["spec"]["containers"][0]["securityContext"]
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert ctx["runAsUser"] == 0 and ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"]
    assert not pod["spec"].get("hostNetwork") and not pod["spec"].get("hostPID")
    # No GPU and no NVML on this node: the agent says so and exits non-zero, and the kubelet restarts it.
    state = wait_until("the agent's container to run and exit", terminated, 120)

    def said() -> str | None:
        # Either run's log: the kubelet may already have removed the exited container, or not yet started the next.
        for previous in (["--previous"], []):
            out = live.kubectl("logs", "-n", AGENT_NAMESPACE, pod["metadata"]["name"], *previous, check=False).stdout
            if "NVML unavailable" in out:
                return out
        return None

    logs = wait_until("the agent's log saying NVML is unavailable", said, 90, interval=2)
    assert state["exitCode"] == 2, state
    print(f"\nnode agent without a GPU: exit {state['exitCode']}: {logs.strip()[-300:]}")


def test_given_an_nvml_library_the_node_agent_applies_the_caps_asked_on_its_node_and_puts_defaults_back(
    live: Cluster, node: dict[str, Any]
) -> None:
    # The simulated libnvidia-ml.so.1 (simulator/nvml) mounted from the host and put on the agent's library path,
    # as the NVIDIA container runtime injects the driver's: the agent and nvidia-ml-py in the image run unchanged.
    lib = (RUN / "realnode-simnvml").resolve()
    built = subprocess.run([str(ROOT / "hack" / "build-simnvml.sh"), str(lib)], capture_output=True, text=True)
    if built.returncode == 3:
        pytest.skip(built.stderr.strip())
    assert built.returncode == 0, built.stderr
    limits = lib / "limits"
    limits.unlink(missing_ok=True)
    mount = "/opt/ebbtide-nvml"
    env = {"LD_LIBRARY_PATH": mount, "EBBTIDE_SIMNVML_GPUS": "2", "EBBTIDE_SIMNVML_STATE": f"{mount}/limits"}
    volume = {"name": "nvml", "hostPath": {"path": str(lib), "type": "Directory"}}
    helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--reuse-values",
         "--set-json", f"nodeAgent.extraEnv={json.dumps([{'name': k, 'value': v} for k, v in env.items()])}",
         "--set-json", f"nodeAgent.extraVolumes={json.dumps([volume])}",
         "--set-json", f'nodeAgent.extraVolumeMounts=[{{"name":"nvml","mountPath":"{mount}"}}]',
         kubeconfig=live.kubeconfig)  # fmt: skip
    live.kubectl("rollout", "status", f"daemonset/{RELEASE}-node-agent", "-n", AGENT_NAMESPACE, "--timeout=180s")
    name = node["node"]

    def enforced() -> dict[str, Any]:
        notes = live.get("node", name)["metadata"].get("annotations", {})
        return json.loads(notes.get(ENFORCED_ANNOTATION, "{}"))

    def on_device() -> list[int]:
        return [int(line) for line in limits.read_text().split()] if limits.exists() else []

    try:
        # The operator asks for caps on the node (what its power manager writes); GPU 1 stays at its default.
        live.kubectl("annotate", "--overwrite", "node", name, f'{CAPS_ANNOTATION}={{"0":350,"1":null}}')
        wait_until("GPU 0 capped at 350 W", lambda: enforced().get("0", {}).get("enforcedW") == 350, 90)
        assert enforced()["1"] == {"enforcedW": 700, "defaultW": 700}
        assert on_device() == [350_000, 0], "NVML holds the limit in milliwatts, per device"
        # A cap NVML's constraints rule out is reported, and the limit in force stays.
        live.kubectl("annotate", "--overwrite", "node", name, f'{CAPS_ANNOTATION}={{"0":100}}')
        wait_until("the refusal reported", lambda: "constraints" in enforced().get("0", {}).get("error", ""), 90)
        assert enforced()["0"]["enforcedW"] == 350 and on_device() == [350_000, 0]
    finally:
        # The caps lifted: every GPU back to its default limit.
        live.kubectl("annotate", "node", name, f"{CAPS_ANNOTATION}-")
    wait_until("defaults back", lambda: all(d.get("enforcedW") == 700 for d in enforced().values()), 90)
    assert on_device() == [0, 0]
    print(f"\nnode agent with the simulated NVML: {enforced()}")


def test_killing_the_leader_pod_hands_binding_to_another_replica_without_double_booking(live: Cluster, ns: str) -> None:
    first = wait_until("a leader", lambda: leader(live), 60)
    others = [p["metadata"]["name"] for p in operator_pods(live) if p["metadata"]["name"] != first]
    before = {name: bound_gangs(live, name) for name in [first, *others]}
    live.kubectl("apply", "-n", ns, "-f", "-", stdin=SERVICE.replace("REPLICAS", "2"))
    wait_until("2 gangs bound", lambda: len(placed(live, ns)) == 2, 120)
    assert bound_gangs(live, first) - before[first] == 2, "the leader binds"
    assert all(bound_gangs(live, o) == before[o] for o in others), "a standby binds nothing"

    # No goodbye: the pod is gone at once and its claim stays until it expires.
    live.kubectl("delete", "pod", first, "-n", NAMESPACE, "--grace-period=0", "--force")
    live.kubectl("scale", "-n", ns, "llms/ha", "--replicas=4")
    wait_until("the 2 new gangs bound", lambda: len(placed(live, ns)) == 4, PEERING_LIFETIME_S + 150)

    # The Deployment's replacement pod serves /metrics once Ready.
    wait_until("2 operator pods Ready again", lambda: ready_operator_pods(live) == 2, 120)
    survivors = [p["metadata"]["name"] for p in operator_pods(live)]
    assert first not in survivors
    after = {name: bound_gangs(live, name) - before.get(name, 0.0) for name in survivors}
    assert sum(after.values()) == 2, after
    assert gpus_booked_once(placed(live, ns))
    for name in survivors:
        assert "already bound" not in live.kubectl("logs", "-n", NAMESPACE, name).stdout
    took_over = "the standby" if any(after.get(o, 0) for o in others) else "the Deployment's replacement pod"
    print(f"\nfailover: leader {first} killed; {took_over} bound the new gangs: {after}")


def test_uninstall_removes_the_release_and_keeps_the_crds_and_their_objects(live: Cluster, ns: str) -> None:
    live.kubectl("apply", "-n", ns, "-f", "-", stdin=SERVICE.replace("REPLICAS", "1"))
    out = helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", kubeconfig=live.kubeconfig)
    assert "uninstalled" in out.stdout
    wait_until("operator pods gone", lambda: not operator_pods(live), 120)
    for crd in ("llmservices.ebbtide.dev", "finetunejobs.ebbtide.dev", "powerbudgets.ebbtide.dev"):
        assert live.exists("crd", crd), crd
    assert live.exists("llms", "ha", "-n", ns)


def ready_operator_pods(cluster: Cluster) -> int:
    statuses = [p["status"].get("containerStatuses") or [{"ready": False}] for p in operator_pods(cluster)]
    return sum(all(c["ready"] for c in cs) for cs in statuses)


@pytest.fixture(autouse=True)
def _operator_pods_stay_healthy(request: pytest.FixtureRequest) -> None:
    """Every story starts with the chart's operator Running, except the uninstall that ends the tier."""
    if "uninstall" in request.node.name or "live" not in request.fixturenames:
        return
    live: Cluster = request.getfixturevalue("live")
    wait_until("2 operator pods Ready", lambda: ready_operator_pods(live) == 2, 120)
