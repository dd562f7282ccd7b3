"""The e2e suite runs the shared scenarios against a live cluster, and only when asked to.

EBBTIDE_E2E=1 with KUBECONFIG: any cluster where Ebbtide is installed (kind with the Helm chart, a real one).
EBBTIDE_E2E=local (`make e2e`): the local control plane, operator and simulated fleet, started exactly as the
integration suite starts them (its fixtures are reused, not copied). Unset: every e2e test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The local stack is the integration suite's own fixtures, so both suites start the same processes.
from tests.integration.conftest import cluster, fleet, operator, redis_url  # noqa: F401
from tests.kube import ROOT, Cluster, wait_until

MODE = os.environ.get("EBBTIDE_E2E", "")
E2E_DIR = Path(__file__).resolve().parent


def skip_reason() -> str | None:
    """Why the e2e suite does not run in this session, if it does not."""
    if MODE == "local":
        return None
    if MODE != "1":
        return (
            "e2e runs only when asked: EBBTIDE_E2E=1 with KUBECONFIG pointing at a cluster running Ebbtide, "
            "or `make e2e` (EBBTIDE_E2E=local) for the local control plane"
        )
    if not os.environ.get("KUBECONFIG"):
        return "EBBTIDE_E2E=1 but KUBECONFIG is unset: point it at a cluster running Ebbtide (e.g. `make kind-up`)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = skip_reason()
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def kubectl_binary() -> str:
    """$EBBTIDE_KUBECTL, kubectl on PATH, else the pinned one the local control plane uses."""
    if os.environ.get("EBBTIDE_KUBECTL"):
        return os.environ["EBBTIDE_KUBECTL"]
    found = shutil.which("kubectl")
    if found:
        return found
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "cluster.py"), "binaries"], check=True, stdout=subprocess.PIPE, text=True
    )
    return str(Path(out.stdout.strip().splitlines()[-1]) / "kubectl")


@pytest.fixture(scope="session")
def live(request: pytest.FixtureRequest) -> Cluster:
    """The cluster under test, with Ebbtide running on it."""
    if MODE == "local":
        request.getfixturevalue("operator")
        request.getfixturevalue("fleet")
        c: Cluster = request.getfixturevalue("cluster")
        return c
    c = Cluster(Path(os.environ["KUBECONFIG"]), kubectl_binary())
    assert c.exists("crd", "llmservices.ebbtide.dev"), "Ebbtide's CRDs are not installed on this cluster"
    # The examples name these PriorityClasses; the chart creates them, other installs may not have.
    for name in ("ebbtide-serving-high", "ebbtide-batch-low"):
        if not c.exists("priorityclass", name):
            c.kubectl("apply", "-f", str(ROOT / "examples" / "priorityclasses.yaml"))
    return c


@pytest.fixture
def e2e_ns(live: Cluster) -> Iterator[str]:
    """A fresh namespace per scenario, removed afterwards."""
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    live.kubectl("create", "namespace", name)
    wait_until("default service account", lambda: live.exists("serviceaccount", "default", "-n", name), 60)
    yield name
    live.kubectl("delete", "namespace", name, "--wait=false", check=False)
