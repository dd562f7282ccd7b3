"""The real local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok), the operator and
the simulated fleet as processes, started once per test session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube import ROOT, Cluster, wait_until

RUN = ROOT / ".run"


def _up(state: Path | None = None, *extra: str) -> Cluster:
    """The session's control plane in `state` (default: $EBBTIDE_TEST_CLUSTER_DIR or .run/test-cluster);
    `extra` goes to `hack/cluster.py up`."""
    state = state or Path(os.environ.get("EBBTIDE_TEST_CLUSTER_DIR", RUN / "test-cluster"))
    # The binaries come from `make binaries`; without them the script says so (tests/conftest.py), and so do we.
    found = subprocess.run([str(ROOT / "hack" / "build-control-plane.sh")], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.fail(found.stderr.strip(), pytrace=False)
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "cluster.py"), "up", "--dir", str(state), "--nodes", "8", *extra],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Cluster(Path(out.stdout.strip().splitlines()[-1]), str(Path(found.stdout.strip()) / "kubectl"))


class Proc:
    """A background process with its log in .run/test-logs, restartable (the operator-killed story)."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name, self.argv = name, argv
        self.proc: subprocess.Popen[bytes] | None = None
        (RUN / "test-logs").mkdir(parents=True, exist_ok=True)
        self.log = RUN / "test-logs" / f"{name}.log"

    def start(self) -> None:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=20)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = _up()
    c.kubectl("apply", "-f", str(ROOT / "crds" / "manifests"))
    # A CRD created a moment ago may not have a status yet, which `kubectl wait` reports as an error.
    wait_until(
        "CRDs established",
        lambda: (
            c.kubectl("wait", "--for", "condition=established", "crd", "--all", "--timeout=30s", check=False).returncode
            == 0
        ),
        90,
    )
    c.kubectl("apply", "-f", str(ROOT / "crds" / "peering"))
    c.kubectl("apply", "-f", str(ROOT / "examples" / "priorityclasses.yaml"))
    yield c
    if not os.environ.get("EBBTIDE_KEEP_CLUSTER"):
        subprocess.run(
            [sys.executable, str(ROOT / "hack" / "cluster.py"), "down", "--dir", str(c.kubeconfig.parent)], check=False
        )


def _free_port() -> int:
    return _free_ports(1)[0]


def _free_ports(n: int) -> list[int]:
    """`n` distinct free ports (each socket stays bound until all are chosen: a closed port can come back at once)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A real redis-server (Debian's) on a free port: the autoscaler's history store (the Redis-killed story
    kills and restarts it on the same port)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing; `make test` installs it (hack/ensure-redis.sh)")
    port = _free_port()
    p = Proc("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                       "--dir", str(tmp_path_factory.mktemp("redis"))])  # fmt: skip
    p.port = port  # type: ignore[attr-defined]
    p.start()
    wait_until("redis up", lambda: _tcp_open(port), 20, 0.1)
    yield p
    p.kill(signal.SIGTERM)


@pytest.fixture(scope="session")
def redis_url(redis: Proc) -> str:
    return f"redis://127.0.0.1:{redis.port}/0"  # type: ignore[attr-defined]


def _tcp_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def operator_argv(cluster: Cluster, redis_url: str, metrics: int, health: int) -> list[str]:
    """The session operator's command line (the chaos run starts its peering replicas with the same one)."""
    return [
        sys.executable, str(ROOT / "operator" / "main.py"), "--kubeconfig", str(cluster.kubeconfig),
        "--metrics-port", str(metrics), "--health-port", str(health), "--resync-seconds", "3",
        "--peering-lifetime-seconds", "8", "--log-format", "plain", "--redis-url", redis_url,
        "--autoscale-interval-seconds", "2", "--metrics-url-template", "{engineURL}/metrics",
        "--deregistration-seconds", "3", "--default-cold-start-seconds", "5", "--forecast-error-window", "20",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def operator(cluster: Cluster, redis_url: str) -> Iterator[Proc]:
    metrics, health = _free_ports(2)
    p = Proc("operator", operator_argv(cluster, redis_url, metrics, health))
    p.metrics_port = metrics  # type: ignore[attr-defined]
    p.health_port = health  # type: ignore[attr-defined]
    p.start()
    yield p
    p.kill(signal.SIGTERM)


@pytest.fixture(scope="session")
def fleet(cluster: Cluster) -> Iterator[Proc]:
    p = Proc(
        "fleet",
        [
            sys.executable, "-m", "simulator.fleet", "--kubeconfig", str(cluster.kubeconfig),
            "--state-dir", str(RUN / "test-fleet"), "--cold-start-scale", "100",
        ],
    )  # fmt: skip
    p.start()
    yield p
    p.kill(signal.SIGTERM)


@pytest.fixture
def ns(cluster: Cluster, operator: Proc, fleet: Proc) -> Iterator[str]:
    """A fresh namespace per story, removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    wait_until("default service account", lambda: cluster.exists("serviceaccount", "default", "-n", name), 30)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
