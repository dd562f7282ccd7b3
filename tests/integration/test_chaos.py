"""Chaos: the single fault stories (test_faults.py, test_peering.py) injected at random under load, for a bounded time.

Four services (one a gang over two nodes) take steady requests through the gateway while one of them is scaled up
and down, and two operator replicas share the peering with the session operator. A seeded RNG picks, a few seconds
to tens of seconds apart: the peering leader SIGKILLed mid-scale-up (restarted later), Redis killed and restarted,
the API server restarted, an engine's /metrics hung, a node deleted under a serving pod (the first time, under the
spanning gang). Once the system settles the run reports requests sent and failed (by the fault window each failure
fell in), objects lost or duplicated, and whether every service is back at its desired replicas and Ready. Targets:
nothing lost or duplicated, and no failed request except in the window of a node deletion, which kills the pods on
that node while they serve.

`make chaos` runs it; EBBTIDE_CHAOS_SECONDS bounds it (default 180), EBBTIDE_CHAOS_SEED replays a run."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from kubernetes import client as kclient
from kubernetes import config as kconfig

from crds import labels as L
from simulator.loadgen.gateway import Gateway, KubernetesBackends
from tests.integration.conftest import RUN, Proc, _free_ports, _tcp_open, operator_argv
from tests.integration.test_faults import apiserver_restart, live_pods, recreate_node
from tests.integration.test_peering import claims, gpus_booked_once
from tests.kube import Cluster, condition, wait_until

pytestmark = pytest.mark.chaos

DURATION_S = float(os.environ.get("EBBTIDE_CHAOS_SECONDS", "180"))
LOAD_RPS = 2.0  # requests per second to each loaded service
LOADED = ("chat-a", "chat-b", "chat-c", "wide")
SPANNING = "wide"  # a gang of two H100 nodes: a node deletion under it must restart it whole
SCALED = "chat-c"  # the service whose replicas change while the faults happen
SCRAPED = "scrape"  # autoscaled and outside the load: its engine URL is pointed at a hung /metrics
KILLS_SERVING_PODS = "node-delete"
# A fault's window runs this long past its undoing: the gateway's refresh (0.5 s) and requests already in flight. A
# node deletion is undone when every loaded service is Ready again without the node (its pods GC'd and recreated).
WINDOW_GRACE_S = 5.0
SERVICE = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {name: NAME}
spec:
  model: {name: tiny-1b, source: hf://example/tiny-1b, parametersB: 1}
  engine: {type: simulated}
  gpu: {count: 1, types: [L4, A100, H100]}
  replicas: REPLICAS
  scaling: {minReplicas: 1, maxReplicas: 6, policy: none}
"""
WIDE = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {name: wide}
spec:
  model: {name: tiny-1b, source: hf://example/tiny-1b, parametersB: 1}
  engine: {type: simulated}
  gpu: {count: 16, perNode: 8, types: [H100]}
  parallelism: {tensor: 8, pipeline: 2}
  replicas: 1
  scaling: {minReplicas: 1, maxReplicas: 1, policy: none}
"""
AUTOSCALED = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {name: scrape}
spec:
  model: {name: tiny-1b, source: hf://example/tiny-1b, parametersB: 1}
  engine: {type: simulated}
  gpu: {count: 1, types: [L4, A100, H100]}
  replicas: 1
  scaling: {minReplicas: 1, maxReplicas: 2, policy: forecast, scaleDownStabilizationSeconds: 600}
"""


@dataclass
class Sent:
    """One request through the gateway: when (seconds since the run began), to which service, and how it ended."""

    t: float
    service: str
    ok: bool
    detail: str


@dataclass
class Fault:
    """One injected fault and the seconds (since the run began) its window spans."""

    kind: str
    start: float
    end: float = 0.0
    note: str = ""


class GatewayLoad:
    """Steady completions to each service through its own gateway (ready, non-draining pods only), recorded."""

    def __init__(self, kubeconfig: str, ns: str, services: tuple[str, ...], t0: float) -> None:
        self.kubeconfig, self.ns, self.services, self.t0 = kubeconfig, ns, services, t0
        self.sent: list[Sent] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, http: httpx.AsyncClient, service: str, port: int) -> None:
        t = time.monotonic() - self.t0
        body = {"model": "tiny-1b", "prompt": "hello " * 32, "max_tokens": 8}
        try:
            r = await http.post(f"http://127.0.0.1:{port}/v1/completions", json=body)
            self.sent.append(Sent(t, service, r.status_code == 200, str(r.status_code)))
        except httpx.HTTPError as exc:
            self.sent.append(Sent(t, service, False, type(exc).__name__))

    async def _main(self) -> None:
        runners, ports = [], {}
        for service in self.services:
            api = kclient.CoreV1Api(kconfig.new_client_from_config(config_file=self.kubeconfig))
            gateway = Gateway(KubernetesBackends(service, self.ns, api), refresh_s=0.5, request_timeout_s=30)
            runner = web.AppRunner(gateway.app())
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            ports[service] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await asyncio.sleep(1.0)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                while not self.stop.is_set():
                    for service, port in ports.items():
                        task = asyncio.create_task(self._one(http, service, port))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    await asyncio.sleep(1 / LOAD_RPS)
                await asyncio.gather(*tasks)
        finally:
            for runner in runners:
                await runner.cleanup()

    def __enter__(self) -> GatewayLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def ready(cluster: Cluster, ns: str, name: str) -> bool:
    """Ready condition True and as many ready replicas as desired."""
    obj = cluster.get("llms", name, "-n", ns)
    status = obj.get("status") or {}
    return (condition(obj, "Ready") or {}).get("status") == "True" and int(status.get("readyReplicas") or 0) == int(
        obj["spec"]["replicas"]
    )


@dataclass
class Chaos:
    """The faults, each injecting and undoing itself inline; the run's seeded RNG picks which and for how long."""

    cluster: Cluster
    ns: str
    rng: random.Random
    t0: float
    redis: Proc
    peers: list[Proc]
    hung_url: str
    faults: list[Fault] = field(default_factory=list)
    deleted_nodes: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def scale(self, fault: Fault) -> None:
        current = int(self.cluster.get("llms", SCALED, "-n", self.ns)["spec"]["replicas"])
        replicas = self.rng.choice([n for n in range(1, 5) if n != current])
        self.cluster.kubectl("scale", "-n", self.ns, f"llms/{SCALED}", f"--replicas={replicas}")
        fault.note = f"{SCALED} -> {replicas}"

    def leader_kill(self, fault: Fault) -> None:
        """The highest-priority peer SIGKILLed just after a scale-up begins; started again 10-20 s later."""
        leader = max((p for p in self.peers if p.alive()), key=lambda p: p.priority)  # type: ignore[attr-defined]
        current = int(self.cluster.get("llms", SCALED, "-n", self.ns)["spec"]["replicas"])
        up = min(current + self.rng.randint(1, 2), 6)
        self.cluster.kubectl("scale", "-n", self.ns, f"llms/{SCALED}", f"--replicas={up}")
        leader.kill()
        down_s = self.rng.uniform(10, 20)
        fault.note = f"{leader.name} killed, {SCALED} {current} -> {up}, back after {down_s:.0f} s"
        time.sleep(down_s)
        leader.start()

    def redis_restart(self, fault: Fault) -> None:
        down_s = self.rng.uniform(5, 15)
        self.redis.kill()
        time.sleep(down_s)
        self.redis.start()
        wait_until("redis back", lambda: _tcp_open(self.redis.port), 20, 0.1)  # type: ignore[attr-defined]
        fault.note = f"down {down_s:.0f} s"

    def apiserver_restart(self, fault: Fault) -> None:
        apiserver_restart(self.cluster)

    def metrics_hang(self, fault: Fault) -> None:
        pods = live_pods(self.cluster, self.ns, SCRAPED)
        if not pods:
            fault.note = "no pod to hang"
            return
        pod = self.rng.choice(pods)
        name, real = pod["metadata"]["name"], pod["metadata"]["annotations"][L.ENGINE_URL]
        hang_s = self.rng.uniform(10, 20)

        def point_at(url: str) -> None:
            patch = json.dumps({"metadata": {"annotations": {L.ENGINE_URL: url}}})
            self.cluster.kubectl("patch", "-n", self.ns, "pod", name, "--type=merge", "-p", patch)

        point_at(self.hung_url)
        try:
            time.sleep(hang_s)
        finally:
            point_at(real)
        fault.note = f"{name} for {hang_s:.0f} s"

    def node_delete(self, fault: Fault) -> None:
        """A node serving one of the loaded services deleted (put back at the end of the run); the window lasts
        until every loaded service is Ready again."""
        serving = sorted(
            {
                p["spec"]["nodeName"]
                for s in LOADED
                for p in live_pods(self.cluster, self.ns, s)
                if p["spec"].get("nodeName")
            }
        )
        gone = {n["metadata"]["name"] for n in self.deleted_nodes}
        candidates = [n for n in serving if n not in gone]
        spanning = sorted(p["spec"]["nodeName"] for p in live_pods(self.cluster, self.ns, SPANNING)
                          if p["spec"].get("nodeName") in candidates)  # fmt: skip
        if spanning and not gone:  # the first deletion always hits the gang over two nodes
            candidates = spanning
        if not candidates or len(self.deleted_nodes) >= 2:  # keep capacity for every replica the run may ask
            fault.note = "skipped: two nodes already deleted"
            return
        node = self.rng.choice(candidates)
        self.deleted_nodes.append(self.cluster.get("node", node))
        self.cluster.kubectl("delete", "node", node)
        wait_until(
            "the deleted node's pods replaced and every loaded service Ready",
            lambda: all(
                ready(self.cluster, self.ns, s)
                and all(p["spec"].get("nodeName") != node for p in live_pods(self.cluster, self.ns, s))
                for s in LOADED
            ),
            240,
            1.0,
        )
        fault.note = f"{node} (under {SPANNING}'s two-node gang)" if node in spanning else node

    def inject(self, kind: str) -> None:
        fault = Fault(kind, self.now())
        self.faults.append(fault)
        action: Callable[[Fault], None] = getattr(self, kind.replace("-", "_"))
        print(f"{fault.start:6.1f} s  {kind}", flush=True)
        try:
            action(fault)
        except Exception as exc:  # a fault whose recovery never came: reported with the rest, the run goes on
            fault.note += f" FAILED: {exc}"
            self.errors.append(f"{kind} at {fault.start:.0f} s: {exc}")
        finally:
            fault.end = self.now() + WINDOW_GRACE_S

    def next_kind(self, bag: list[str]) -> str:
        """Every kind once, in a seeded order, before any repeats: a short run still meets each fault."""
        if not bag:
            bag += self.rng.sample(KINDS, len(KINDS))
        return bag.pop()


KINDS = ("scale", "leader-kill", "redis-restart", "apiserver-restart", "metrics-hang", "node-delete")


@pytest.fixture
def peers(cluster: Cluster, redis_url: str, operator: Proc) -> Iterator[list[Proc]]:
    """Two operator replicas, autoscaling as the session operator does, above it in the peering."""
    procs = []
    for name, priority in (("operator-chaos-standby", 2_000_011), ("operator-chaos-leader", 2_000_012)):
        metrics, health = _free_ports(2)
        p = Proc(name, [*operator_argv(cluster, redis_url, metrics, health), "--priority", str(priority)])
        p.priority = priority  # type: ignore[attr-defined]
        p.log.unlink(missing_ok=True)  # the run reads the replicas' logs
        p.start()
        procs.append(p)
    wait_until(
        "both replicas claim the peering",
        lambda: {2_000_011, 2_000_012} <= {c.get("priority") for c in claims(cluster).values()},
        60,
    )
    yield procs
    for p in procs:
        p.kill(signal.SIGTERM)  # a clean exit withdraws the claim, so the session operator resumes at once


def duplicates_and_losses(cluster: Cluster, ns: str) -> tuple[list[str], list[str]]:
    """(duplicated, lost): two live pods for one replica index, fewer replica indices than desired, a missing
    service."""
    duplicated, lost = [], []
    services = {o["metadata"]["name"]: o for o in cluster.get("llms", "-n", ns)["items"]}
    for name in (*LOADED, SCRAPED):
        if name not in services:
            lost.append(f"LLMService {name} missing")
            continue
        # A pod the operator is draining (scale-down) is on its way out, not a duplicate.
        pods = [
            p for p in live_pods(cluster, ns, name) if L.DRAIN_STARTED not in (p["metadata"].get("annotations") or {})
        ]
        # A gang member is its replica, role (leader, worker) and rank within the role.
        by_member = Counter(tuple(p["metadata"]["labels"].get(k) for k in (L.REPLICA, L.ROLE, L.RANK)) for p in pods)
        duplicated += [f"{name} replica {i} {role} {r}: {n} pods" for (i, role, r), n in by_member.items() if n > 1]
        by_index = Counter(i for i, _, _ in by_member)
        want = int(services[name]["spec"]["replicas"])
        if len(by_index) < want:
            lost.append(f"{name}: {len(by_index)} replicas of {want}")
        if len(by_index) > want:
            duplicated.append(f"{name}: {len(by_index)} replicas for {want} desired")
    bound = [
        p
        for p in cluster.get("pods", "-A")["items"]
        if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
        and "ebbtide.dev/gpu-indices" in (p["metadata"].get("annotations") or {})
    ]  # fmt: skip
    if not gpus_booked_once(bound):
        duplicated.append("a GPU booked twice")
    return duplicated, lost


def windows_of(t: float, faults: list[Fault]) -> list[Fault]:
    return [f for f in faults if f.start <= t <= f.end]


def summary(seed: int, duration: float, faults: list[Fault], sent: list[Sent], duplicated: list[str],
            lost: list[str], settled: bool) -> str:  # fmt: skip
    """The run's table, in Markdown (printed, and written to .run/chaos-summary.md for bench/results)."""
    failed = [s for s in sent if not s.ok]
    lines = [
        f"seed {seed}, {duration:.0f} s of faults, {len(faults)} injected",
        "",
        "| t start (s) | t end (s) | fault | detail | requests failed in its window |",
        "|---:|---:|---|---|---:|",
    ]
    for f in faults:
        n = sum(1 for s in failed if f.start <= s.t <= f.end)
        lines.append(f"| {f.start:.1f} | {f.end:.1f} | {f.kind} | {f.note} | {n} |")
    outside = [s for s in failed if not windows_of(s.t, faults)]
    by_service = Counter(s.service for s in sent)
    failed_by_service = Counter(s.service for s in failed)
    why = Counter(s.detail for s in failed)
    lines += [
        "",
        "| requests sent | failed | failed outside any fault window | failed in node-delete windows only |"
        " lost | duplicated | settled (desired replicas, Ready) |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {len(sent)} | {len(failed)} | {len(outside)} | "
        f"{sum(1 for s in failed if {w.kind for w in windows_of(s.t, faults)} == {KILLS_SERVING_PODS})} | "
        f"{len(lost)} | {len(duplicated)} | {'yes' if settled else 'no'} |",
        "",
        "- per service (sent/failed): " + ", ".join(f"{k} {by_service[k]}/{failed_by_service[k]}" for k in LOADED),
        "- failures by answer: " + (", ".join(f"{k} x{v}" for k, v in why.items()) or "none"),
    ]
    lines += [f"- lost: {x}" for x in lost] + [f"- duplicated: {x}" for x in duplicated]
    return "\n".join(lines)


def test_random_faults_under_load_lose_nothing_duplicate_nothing_and_fail_no_request_outside_node_loss(
    cluster: Cluster, ns: str, operator: Proc, redis: Proc, peers: list[Proc]
) -> None:
    seed = int(os.environ.get("EBBTIDE_CHAOS_SEED") or random.SystemRandom().randrange(1 << 31))
    print(f"\nchaos seed {seed} (EBBTIDE_CHAOS_SEED={seed} replays it), {DURATION_S:.0f} s")
    rng = random.Random(seed)
    for name, replicas in (("chat-a", 2), ("chat-b", 2), (SCALED, 1)):
        cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=SERVICE.replace("NAME", name).replace(
            "REPLICAS", str(replicas)))  # fmt: skip
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=WIDE)
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=AUTOSCALED)
    wait_until("every service Ready", lambda: all(ready(cluster, ns, s) for s in (*LOADED, SCRAPED)), 180, 1.0)
    logs_from = {p.name: p.log.stat().st_size if p.log.exists() else 0 for p in (operator, *peers)}

    with socket.socket() as hung:  # accepts (the kernel's backlog) and never answers: a /metrics that hangs
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        t0 = time.monotonic()
        chaos = Chaos(cluster, ns, rng, t0, redis, peers, f"http://127.0.0.1:{hung.getsockname()[1]}")
        try:
            with GatewayLoad(str(cluster.kubeconfig), ns, LOADED, t0) as load:
                try:
                    time.sleep(3)
                    chaos.inject("scale")  # a scale change under way from the start
                    bag: list[str] = []
                    while chaos.now() < DURATION_S:
                        time.sleep(rng.uniform(3, 12))
                        if chaos.now() >= DURATION_S:
                            break
                        chaos.inject(chaos.next_kind(bag))
                finally:
                    for p in peers:
                        if not p.alive():
                            p.start()
                    if not _tcp_open(redis.port):  # type: ignore[attr-defined]
                        redis.start()
                settled_at = chaos.now()
                try:
                    wait_until("every service at its desired replicas and Ready", lambda: all(
                        ready(cluster, ns, s) for s in (*LOADED, SCRAPED)), 300, 1.0)  # fmt: skip
                    settled = True
                except AssertionError:
                    settled = False
                settle_s = chaos.now() - settled_at
                time.sleep(5)  # a last stretch of load on the settled system
        finally:
            for node in chaos.deleted_nodes:
                recreate_node(cluster, node)

    time.sleep(8)  # a duplicate would appear within a resync or two (3 s) of the last takeover
    duplicated, lost = duplicates_and_losses(cluster, ns)
    for p in (operator, *peers):
        with open(p.log, "rb") as f:
            f.seek(logs_from[p.name])
            if b"already bound" in f.read():
                duplicated.append(f"{p.name} lost a binding race (a gang bound twice)")
    sent = load.sent
    table = summary(seed, DURATION_S, chaos.faults, sent, duplicated, lost, settled)
    table += f"\n- settled {f'{settle_s:.0f} s after the last fault' if settled else 'never (300 s)'}"
    print(table)
    RUN.mkdir(exist_ok=True)
    (RUN / "chaos-summary.md").write_text(table + "\n")

    assert sent, "the load sent nothing"
    assert not chaos.errors, f"faults the system did not recover from (seed {seed}): {chaos.errors}"
    assert not lost, f"objects lost (seed {seed}): {lost}"
    assert not duplicated, f"objects duplicated (seed {seed}): {duplicated}"
    assert settled, f"not every service came back to its desired replicas and Ready (seed {seed})"
    failures: dict[str, list[Sent]] = defaultdict(list)
    for s in sent:
        if not s.ok and KILLS_SERVING_PODS not in {w.kind for w in windows_of(s.t, chaos.faults)}:
            failures[",".join(w.kind for w in windows_of(s.t, chaos.faults)) or "no fault"].append(s)
    assert not failures, f"requests failed outside node-deletion windows (seed {seed}): " + "; ".join(
        f"{k}: {len(v)}, e.g. {v[0]}" for k, v in failures.items()
    )
    assert all(p.alive() for p in (operator, *peers)), "an operator process died on its own"
