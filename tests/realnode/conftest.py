"""The real-node tier: a real node (hack/real_node.py) joins a fresh local control plane beside the KWOK GPU nodes,
the chart is installed with Helm, its operator and Redis run in real pods on that node, the simulated fleet serves
the GPU pods on the KWOK nodes. Needs root; run with `make realnode-test` (`-m realnode`)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# The e2e suite's per-scenario namespace fixture, reused as is; `ns` is the integration stories' name for it.
from tests.e2e.conftest import e2e_ns  # noqa: F401
from tests.helmchart import CHART, helm
from tests.integration.conftest import RUN, Proc
from tests.kube import ROOT, Cluster, wait_until

TIER_DIR = Path(__file__).resolve().parent
RELEASE, NAMESPACE = "ebbtide", "ebbtide-system"
# The node agent's namespace: it runs as root with CAP_SYS_ADMIN, which only the privileged Pod Security level admits.
AGENT_NAMESPACE = "ebbtide-node-agent"
# Short enough for the failover story, long enough for a loaded 2-core machine's heartbeats.
PEERING_LIFETIME_S = 10
# The bundled Redis's fixed ClusterIP: the node has no cluster DNS, so the operator connects to this address. In
# the API server's static band of 10.96.0.0/16 (its first 256 addresses), which it allocates dynamically only last.
REDIS_CLUSTER_IP = "10.96.0.200"
OPERATOR_ENV = [
    # The simulated engines listen on the node's IP (each pod's ebbtide.dev/engine-url), not on the KWOK pod IPs.
    {"name": "EBBTIDE_METRICS_URL_TEMPLATE", "value": "{engineURL}/metrics"},
    # Ticks a story can wait for (15 s by default).
    {"name": "EBBTIDE_AUTOSCALE_INTERVAL_SECONDS", "value": "3"},
]


def real_node_module() -> ModuleType:
    """hack/real_node.py (hack/ is not a package), loaded by path."""
    spec = importlib.util.spec_from_file_location("ebbtide_real_node", ROOT / "hack" / "real_node.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TIER_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.realnode)


@pytest.fixture(scope="session")
def node() -> Iterator[dict[str, Any]]:
    """The real node, joined to its own control plane in .run/realnode-test-cluster; torn down after the session."""
    if os.geteuid() != 0:
        pytest.fail("the real-node tier needs root (containerd, the kubelet, iptables)", pytrace=False)
    rn = real_node_module()
    state = Path(os.environ.get("EBBTIDE_REAL_NODE_TEST_DIR", RUN / "realnode-test-cluster")).resolve()
    with rn.exclusive():
        info: dict[str, Any] = rn.up(state, 8)
    yield {**info, "module": rn}
    if not os.environ.get("EBBTIDE_KEEP_CLUSTER"):
        with rn.exclusive():
            rn.down(state)


@pytest.fixture(scope="session")
def cluster(node: dict[str, Any]) -> Cluster:
    return Cluster(Path(node["kubeconfig"]), str(node["module"].cluster.binaries() / "kubectl"))


def chart_values(node: dict[str, Any]) -> list[str]:
    """The locally built images (never pulled), and the operator, Redis and the node agent on the real node,
    tolerating its taint; Redis at a fixed ClusterIP, the operator's Redis address without DNS."""
    repo, tag = node["images"]["operator"].rsplit(":", 1)
    redis_repo, redis_tag = node["images"]["redis"].rsplit(":", 1)
    toleration = f'[{{"key":"{node["taint"]}","operator":"Exists","effect":"NoSchedule"}}]'
    selector = f'{{"{node["taint"]}":"true"}}'
    return [
        "--set", f"image.repository={repo}", "--set-string", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
        "--set", f"redis.image.repository={redis_repo}", "--set-string", f"redis.image.tag={redis_tag}",
        "--set", "redis.image.pullPolicy=Never", "--set", f"redis.service.clusterIP={REDIS_CLUSTER_IP}",
        "--set-json", f"operator.tolerations={toleration}", "--set-json", f"operator.nodeSelector={selector}",
        "--set-json", f"redis.tolerations={toleration}", "--set-json", f"redis.nodeSelector={selector}",
        "--set", f"operator.peering.lifetimeSeconds={PEERING_LIFETIME_S}", "--set", "operator.resyncSeconds=3",
        "--set", "operator.logFormat=plain", "--set-json", f"operator.extraEnv={json.dumps(OPERATOR_ENV)}",
        # The node agent on the real node only (null drops the chart's GPU-node selector; KWOK nodes run no agent).
        "--set", "nodeAgent.enabled=true", "--set", f"nodeAgent.namespace={AGENT_NAMESPACE}",
        "--set-json", f'nodeAgent.nodeSelector={{"nvidia.com/gpu.present":null,"{node["taint"]}":"true"}}',
        "--set-json", f"nodeAgent.tolerations={toleration}",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def release(cluster: Cluster, node: dict[str, Any]) -> Iterator[str]:
    """`helm install` of the chart into a namespace enforcing the restricted Pod Security Standard; waits for the
    rollout. Yields the namespace. The uninstall story removes it; otherwise the session's end does."""
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)  # kept from a run with EBBTIDE_KEEP_CLUSTER
    cluster.kubectl("label", "--overwrite", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    cluster.kubectl("create", "namespace", AGENT_NAMESPACE, check=False)
    cluster.kubectl(
        "label", "--overwrite", "namespace", AGENT_NAMESPACE, "pod-security.kubernetes.io/enforce=privileged"
    )
    out = helm("upgrade", "--install", RELEASE, str(CHART), "-n", NAMESPACE, *chart_values(node),
               kubeconfig=cluster.kubeconfig)  # fmt: skip
    assert "STATUS: deployed" in out.stdout
    cluster.kubectl("rollout", "status", f"deployment/{RELEASE}-operator", "-n", NAMESPACE, "--timeout=240s")
    yield NAMESPACE
    if not os.environ.get("EBBTIDE_KEEP_CLUSTER"):
        helm("uninstall", RELEASE, "-n", NAMESPACE, kubeconfig=cluster.kubeconfig, check=False)


@pytest.fixture(scope="session")
def fleet(cluster: Cluster, node: dict[str, Any]) -> Iterator[Proc]:
    """The simulated fleet on the host: it runs the engines and trainers of the GPU pods on the KWOK nodes, on the
    node's IP, where the operator's pods reach them (the trainers' progress, the engines' metrics)."""
    p = Proc(
        "realnode-fleet",
        [
            sys.executable, "-m", "simulator.fleet", "--kubeconfig", str(cluster.kubeconfig),
            "--state-dir", str(RUN / "realnode-fleet"), "--cold-start-scale", "100",
            "--engine-host", node["module"].NODE_IP,
        ],
    )  # fmt: skip
    p.start()
    yield p
    p.kill(signal.SIGTERM)


@pytest.fixture(scope="session")
def live(cluster: Cluster, release: str, fleet: Proc) -> Cluster:
    """The e2e suite's `live`: a cluster where Ebbtide runs, here from the chart in real pods."""
    wait_until("the operator's leader elected", lambda: leader(cluster) is not None, 90)
    return cluster


@pytest.fixture
def ns(e2e_ns: str) -> str:  # noqa: F811
    """The integration stories' per-story namespace."""
    return e2e_ns


def operator_pods(cluster: Cluster) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")[
        "items"
    ]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def leader(cluster: Cluster) -> str | None:
    """The operator pod whose peering claim has the highest priority (kopf's peer id holds its hostname)."""
    claims: dict[str, Any] = cluster.get("clusterkopfpeering", "ebbtide").get("status") or {}
    pods = {p["metadata"]["name"] for p in operator_pods(cluster) if p["status"].get("phase") == "Running"}
    owners = [(c.get("priority", 0), pod) for peer, c in claims.items() for pod in pods if f"@{pod}" in peer]
    return max(owners)[1] if len(owners) >= 2 else None
