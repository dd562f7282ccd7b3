"""Faults a platform team will meet, on the local control plane with the session operator, fleet and Redis.

The history store dies under autoscaling: replicas are held and AutoscalerDegraded says why until Redis is back,
and nothing scales to zero on the way back. The API server restarts: the operator's watches resume, a service
applied afterwards is reconciled, and the pods it already made are neither recreated nor duplicated. An engine
hangs its /metrics: the scrape times out and the service's ticks go on. A node dies under a running gang of two
nodes: the gang is restarted whole on the nodes left, never completed with a lone member.

Each story kills or stops only what it restarts, so the session's later stories find the cluster as it was."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crds import labels as L
from tests.integration.conftest import Proc, _tcp_open
from tests.kube import Cluster, condition, wait_until

PODS_CREATED = re.compile(r'^ebbtide_pods_created_total\{kind="LLMService"\} (\S+)$', re.M)
DECISIONS = re.compile(r"^ebbtide_autoscaler_decisions_total\{[^}]*\} (\S+)$", re.M)
AUTOSCALED = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {name: NAME}
spec:
  model: {name: tiny-1b, source: hf://example/tiny-1b, parametersB: 1}
  engine: {type: simulated}
  gpu: {count: 1, types: [L4]}
  replicas: REPLICAS
  scaling:
    minReplicas: 0
    maxReplicas: 3
    scaleToZero: true
    policy: forecast
    scaleDownStabilizationSeconds: 600
"""
SPANNING = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {name: wide}
spec:
  model: {name: llama-3-70b, source: hf://meta-llama/Meta-Llama-3-70B-Instruct, parametersB: 70}
  engine: {type: simulated}
  gpu: {count: 16, perNode: 8, types: [H100]}
  parallelism: {tensor: 8, pipeline: 2}
  replicas: 1
  scaling: {minReplicas: 1, maxReplicas: 1, policy: none}
"""


def metric_sum(operator: Proc, pattern: re.Pattern[str]) -> float:
    text = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).text  # type: ignore[attr-defined]
    return sum(float(v) for v in pattern.findall(text))


def live_pods(cluster: Cluster, ns: str, service: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.get("pods", "-n", ns, "-l", f"{L.SERVICE}={service}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready_replicas(cluster: Cluster, ns: str, name: str) -> int:
    return int((cluster.get("llms", name, "-n", ns).get("status") or {}).get("readyReplicas") or 0)


def degraded(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    return condition(cluster.get("llms", name, "-n", ns), "AutoscalerDegraded")


class Trickle:
    """Steady completions straight to the service's engines (their engine-url annotations), so the forecast
    has demand to see: without it an idle service may scale to zero by design."""

    def __init__(self, cluster: Cluster, ns: str, service: str, rps: float = 4.0) -> None:
        self.cluster, self.ns, self.service, self.rps = cluster, ns, service, rps
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=5) as http:
            urls: list[str] = []
            n = 0
            while not self.stop.wait(1 / self.rps):
                if n % 20 == 0:  # pick up the engines the autoscaler added or removed
                    pods = live_pods(self.cluster, self.ns, self.service)
                    urls = [u for p in pods if (u := (p["metadata"].get("annotations") or {}).get(L.ENGINE_URL))]
                n += 1
                if not urls:
                    continue
                body = {"model": "tiny-1b", "prompt": "hello " * 64, "max_tokens": 16}
                try:
                    http.post(f"{urls[n % len(urls)]}/v1/completions", json=body)
                except httpx.HTTPError:
                    pass  # an engine going away is the autoscaler's business, not this load's

    def __enter__(self) -> Trickle:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def sample_replicas(cluster: Cluster, ns: str, name: str, seconds: float) -> list[int]:
    """spec.replicas every half second for `seconds`."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(int(cluster.get("llms", name, "-n", ns)["spec"]["replicas"]))
        time.sleep(0.5)
    return seen


def test_redis_killed_and_restarted_holds_replicas_degraded_and_recovers_without_scaling_to_zero(
    cluster: Cluster, ns: str, redis: Proc
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=AUTOSCALED.replace("NAME", "hist").replace("REPLICAS", "2"))
    wait_until("2 replicas ready", lambda: ready_replicas(cluster, ns, "hist") == 2, 120)
    with Trickle(cluster, ns, "hist"):
        wait_until(
            "the autoscaler reports fresh metrics",
            lambda: (degraded(cluster, ns, "hist") or {}).get("status") == "False",
            60,
        )
        held = int(cluster.get("llms", "hist", "-n", ns)["spec"]["replicas"])
        redis.kill()  # SIGKILL: the store vanishes mid-tick
        try:
            down = wait_until(
                "AutoscalerDegraded=True while Redis is down",
                lambda: (c := degraded(cluster, ns, "hist")) and c["status"] == "True" and c,
                30,
            )
            assert down["reason"] == "HistoryUnavailable", down
            during = sample_replicas(cluster, ns, "hist", 10)
            assert set(during) == {held}, f"replicas must be held while the store is down: {during}"
        finally:
            redis.start()  # same port, empty (--save ""): the history is lost, as a Redis without persistence
            wait_until("redis back", lambda: _tcp_open(redis.port), 20, 0.1)  # type: ignore[attr-defined]
        wait_until(
            "AutoscalerDegraded=False once Redis is back",
            lambda: (degraded(cluster, ns, "hist") or {}).get("status") == "False",
            60,
        )
        after = sample_replicas(cluster, ns, "hist", 15)
    assert min(after) >= 1, f"recovery scaled a loaded service to zero: {after}"
    assert ready_replicas(cluster, ns, "hist") >= 1


def exited(pid: int) -> bool:
    """Gone or a zombie (hack/cluster.py, its parent, exited long ago, so nobody here reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def apiserver_restart(cluster: Cluster) -> None:
    """Stop the kube-apiserver hack/cluster.py started and start it again with the same command line, log and
    pid file (etcd keeps every object)."""
    state = cluster.kubeconfig.parent
    pid_file = state / "kube-apiserver.pid"
    pid = int(pid_file.read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.killpg(pid, signal.SIGTERM)
    try:
        wait_until("kube-apiserver gone", lambda: exited(pid), 20)
    except AssertionError:
        os.killpg(pid, signal.SIGKILL)  # its graceful shutdown waits on long watches; a crash is a restart too
        wait_until("kube-apiserver killed", lambda: exited(pid), 20)
    with open(state / "kube-apiserver.log", "ab") as log:
        proc = subprocess.Popen([a.decode() for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    pid_file.write_text(str(proc.pid))
    wait_until(
        "kube-apiserver ready again",
        lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
        120,
        1.0,
    )


def test_api_server_restart_resumes_watches_and_reconciles_nothing_twice(
    cluster: Cluster, ns: str, operator: Proc
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=AUTOSCALED.replace("NAME", "before").replace(
        "REPLICAS", "2").replace("policy: forecast", "policy: none"))  # fmt: skip
    wait_until("2 replicas ready", lambda: ready_replicas(cluster, ns, "before") == 2, 120)
    uids = {p["metadata"]["uid"] for p in live_pods(cluster, ns, "before")}
    created = metric_sum(operator, PODS_CREATED)

    apiserver_restart(cluster)

    # A watch that did not resume would never see this object: the operator reconciles it only from its watch.
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=AUTOSCALED.replace("NAME", "after").replace(
        "REPLICAS", "1").replace("policy: forecast", "policy: none"))  # fmt: skip
    wait_until("the service applied after the restart is ready", lambda: ready_replicas(cluster, ns, "after") == 1, 120)
    time.sleep(5)  # a relist after the restart would recreate within a resync or two (3 s in this session)
    assert {p["metadata"]["uid"] for p in live_pods(cluster, ns, "before")} == uids, "pods were recreated"
    assert metric_sum(operator, PODS_CREATED) - created == 1, "only the new service's one pod was created"
    assert ready_replicas(cluster, ns, "before") == 2
    assert operator.alive()


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """A listener that accepts connections (the kernel's backlog) and never answers: an engine whose /metrics
    hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_engine_that_hangs_its_metrics_times_out_and_the_ticks_go_on(
    cluster: Cluster, ns: str, operator: Proc, hung_endpoint: str
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=AUTOSCALED.replace("NAME", "hang").replace("REPLICAS", "1"))
    wait_until("1 replica ready", lambda: ready_replicas(cluster, ns, "hang") == 1, 120)
    with Trickle(cluster, ns, "hang"):
        wait_until("fresh metrics", lambda: (degraded(cluster, ns, "hang") or {}).get("status") == "False", 60)
        pod = live_pods(cluster, ns, "hang")[0]
        name, real = pod["metadata"]["name"], pod["metadata"]["annotations"][L.ENGINE_URL]

        def point_at(url: str) -> None:
            patch = json.dumps({"metadata": {"annotations": {L.ENGINE_URL: url}}})
            cluster.kubectl("patch", "-n", ns, "pod", name, "--type=merge", "-p", patch)

        point_at(hung_endpoint)
        try:
            before = metric_sum(operator, DECISIONS)
            t0 = time.monotonic()
            stuck = wait_until(
                "the hung engine's service is reported degraded (its tick finished despite the hang)",
                lambda: (c := degraded(cluster, ns, "hang")) and c["status"] == "True" and c,
                45,
            )
            time.sleep(10)
            rate = (metric_sum(operator, DECISIONS) - before) / (time.monotonic() - t0)
            assert int(cluster.get("llms", "hang", "-n", ns)["spec"]["replicas"]) == 1, "replicas held, not zeroed"
        finally:
            point_at(real)
        wait_until("fresh metrics again", lambda: (degraded(cluster, ns, "hang") or {}).get("status") == "False", 60)
    # The session operator decides every 2 s; a tick parked on the hang would stop the count for good.
    assert rate >= 0.2, f"autoscaler decisions slowed to {rate:.2f}/s during the hang ({stuck['message']})"


@pytest.fixture
def node_restored(cluster: Cluster) -> Iterator[list[dict[str, Any]]]:
    """Nodes a story deletes, put back afterwards (same labels, taints and GPUs) for the session's later stories."""
    deleted: list[dict[str, Any]] = []
    yield deleted
    for node in deleted:
        recreate_node(cluster, node)


def recreate_node(cluster: Cluster, node: dict[str, Any]) -> None:
    """Create a deleted node again from its last manifest (same labels, taints and GPUs; KWOK takes it back)."""
    meta = node["metadata"]
    manifest = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": meta["name"], "labels": meta["labels"], "annotations": {
            k: v for k, v in meta.get("annotations", {}).items() if k.startswith(("kwok", "node.alpha"))}},
        "spec": {"taints": node["spec"].get("taints", [])},
        "status": {k: node["status"][k] for k in ("allocatable", "capacity")},
    }  # fmt: skip
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(manifest), check=False)


def test_node_deleted_under_a_running_gang_restarts_the_gang_whole(
    cluster: Cluster, ns: str, node_restored: list[dict[str, Any]]
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=SPANNING)
    wait_until("the 2-node gang is ready", lambda: ready_replicas(cluster, ns, "wide") == 1, 150)
    first = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in live_pods(cluster, ns, "wide")}
    assert len(set(first.values())) == 2, f"a 16-GPU gang spans two 8-GPU nodes: {first}"
    lost = first["wide-r0-worker-0"]
    node_restored.append(cluster.get("node", lost))
    cluster.kubectl("delete", "node", lost)

    def rescheduled() -> dict[str, str] | None:
        pods = {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in live_pods(cluster, ns, "wide")}
        return pods if "wide-r0-leader" not in pods and ready_replicas(cluster, ns, "wide") == 1 else None

    # The pod GC removes the lost node's pod (up to about a minute); the operator then restarts the gang whole.
    now = wait_until("the gang rescheduled whole and ready", rescheduled, 240, 1.0)
    assert sorted(now) == ["wide-r1-leader", "wide-r1-worker-0"], now
    assert lost not in now.values() and len(set(now.values())) == 2, now
    reasons = [e["reason"] for e in cluster.get("events", "-n", ns)["items"]]
    assert "GangRestarted" in reasons
