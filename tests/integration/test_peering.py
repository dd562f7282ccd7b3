"""High availability: operator replicas share one peering object, and only the active peer binds pods.

Two more operator processes join the session operator's peering with higher priorities. The highest one binds
every gang of a new service, the others bind none, and no GPU is booked twice; when the leader is killed, the
standby takes over once the leader's claim expires and binds what was scaled up meanwhile."""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Proc, _free_port
from tests.kube import ROOT, Cluster, wait_until

LIFETIME_S = 8
BOUND_GANGS = re.compile(r"^ebbtide_packer_bind_duration_seconds_count (\S+)$", re.M)
SERVICE = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata:
  name: ha
spec:
  model: {name: tiny-1b, source: hf://example/tiny-1b, parametersB: 1}
  engine: {type: simulated}
  gpu: {count: 1, types: [L4]}
  replicas: REPLICAS
  scaling: {minReplicas: 1, maxReplicas: 8, policy: none}
"""


def replica(cluster: Cluster, name: str, priority: int) -> Proc:
    p = Proc(
        name,
        [
            sys.executable, str(ROOT / "operator" / "main.py"), "--kubeconfig", str(cluster.kubeconfig),
            "--metrics-port", str(_free_port()), "--health-port", "0", "--priority", str(priority),
            "--peering-lifetime-seconds", str(LIFETIME_S), "--resync-seconds", "3", "--no-autoscaler",
            "--log-format", "plain",
        ],
    )  # fmt: skip
    p.metrics_port = int(p.argv[p.argv.index("--metrics-port") + 1])  # type: ignore[attr-defined]
    p.log.unlink(missing_ok=True)  # this story reads the replica's log
    p.start()
    return p


def bound_gangs(p: Proc) -> float:
    """Gangs this replica has bound (its packer's bind histogram counts one per gang)."""
    text = httpx.get(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=5).text  # type: ignore[attr-defined]
    found = BOUND_GANGS.search(text)
    return float(found.group(1)) if found else 0.0


def serving(p: Proc) -> bool:
    try:
        return bound_gangs(p) == 0
    except httpx.HTTPError:
        return False


def claims(cluster: Cluster) -> dict[str, dict[str, Any]]:
    status: dict[str, dict[str, Any]] = cluster.get("clusterkopfpeering", "ebbtide").get("status") or {}
    return status


def placed(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.get("pods", "-n", ns, "-l", "ebbtide.dev/service=ha")["items"]
    return [p for p in pods if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")]


def gpus_booked_once(pods: list[dict[str, Any]]) -> bool:
    booked = [
        (p["spec"]["nodeName"], i)
        for p in pods
        for i in p["metadata"]["annotations"]["ebbtide.dev/gpu-indices"].split(",")
    ]
    return len(booked) == len(set(booked))


@pytest.fixture
def replicas(cluster: Cluster, operator: Proc, ns: str) -> Iterator[tuple[Proc, Proc]]:
    standby, leader = replica(cluster, "operator-standby", 2_000_001), replica(cluster, "operator-leader", 2_000_002)
    yield standby, leader
    for p in (leader, standby):
        p.kill(signal.SIGTERM)  # a clean exit withdraws the claim, so the session operator resumes at once


def test_only_the_peering_leader_binds_and_the_standby_takes_over_when_it_dies(
    cluster: Cluster, ns: str, operator: Proc, replicas: tuple[Proc, Proc]
) -> None:
    standby, leader = replicas
    wait_until(
        "both replicas claim the peering",
        lambda: {2_000_001, 2_000_002} <= {c.get("priority") for c in claims(cluster).values()},
        60,
    )
    wait_until("both replicas serve metrics, nothing bound yet", lambda: serving(standby) and serving(leader), 30)
    session_before = bound_gangs(operator)

    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=SERVICE.replace("REPLICAS", "3"))
    wait_until("3 gangs bound", lambda: len(placed(cluster, ns)) == 3, 90)

    assert bound_gangs(leader) == 3
    assert bound_gangs(standby) == 0, "a paused replica keeps its cache warm but binds nothing"
    assert bound_gangs(operator) == session_before, "the lower-priority session operator is paused too"
    assert gpus_booked_once(placed(cluster, ns))

    leader.kill()  # SIGKILL: no goodbye, the claim stays until it expires
    cluster.kubectl("scale", "-n", ns, "llms/ha", "--replicas=5")
    wait_until("the standby binds the 2 new gangs", lambda: len(placed(cluster, ns)) == 5, LIFETIME_S + 90)

    assert bound_gangs(standby) == 2
    assert bound_gangs(operator) == session_before
    assert gpus_booked_once(placed(cluster, ns))
    logs = standby.log.read_text() + leader.log.read_text()
    assert "already bound" not in logs, "no binding lost a race to another binder"


def test_leader_killed_mid_scale_up_leaves_the_standby_to_finish_it_without_duplicates(
    cluster: Cluster, ns: str, operator: Proc, replicas: tuple[Proc, Proc]
) -> None:
    standby, leader = replicas
    wait_until(
        "both replicas claim the peering",
        lambda: {2_000_001, 2_000_002} <= {c.get("priority") for c in claims(cluster).values()},
        60,
    )
    wait_until("both replicas serve metrics", lambda: serving(standby) and serving(leader), 30)
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=SERVICE.replace("REPLICAS", "1"))
    wait_until("1 gang bound", lambda: len(placed(cluster, ns)) == 1, 90)

    cluster.kubectl("scale", "-n", ns, "llms/ha", "--replicas=6")
    # Killed as soon as the first new pod exists: wherever the leader is in the scale-up (pods created, some bound,
    # status not yet written), the standby must finish it from what the API server holds.
    wait_until("the scale-up under way", lambda: len(cluster.get("pods", "-n", ns)["items"]) >= 2, 30, 0.05)
    leader.kill()

    wait_until("the standby finishes the scale-up", lambda: len(placed(cluster, ns)) == 6, LIFETIME_S + 90)
    time.sleep(LIFETIME_S)  # a duplicate would appear within a resync or two of the takeover
    pods = [p for p in cluster.get("pods", "-n", ns)["items"] if not p["metadata"].get("deletionTimestamp")]
    indices = sorted(int(p["metadata"]["labels"]["ebbtide.dev/replica"]) for p in pods)
    assert indices == [0, 1, 2, 3, 4, 5], f"one pod per replica index, none duplicated or lost: {indices}"
    assert gpus_booked_once(placed(cluster, ns))
    assert int(cluster.get("llms", "ha", "-n", ns)["spec"]["replicas"]) == 6, "the scale decision survived"
    logs = standby.log.read_text() + leader.log.read_text()
    assert "already bound" not in logs, "no binding lost a race to another binder"
