"""The real-engine tier: the local control plane, the operator and the fleet, where pods of `engine: vllm` run a
real `vllm serve` (the CPU build from hack/real-engine-env.sh, serving the tiny model from hack/tiny-model.py).
Runs only when asked for (`-m realengine`, as `make realengine-test` does); skips loudly without the venv."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conformance.engines import RealEngineEnv, absent, find_real_engine_env
from tests.integration.conftest import RUN, Proc, _free_port, _up, redis, redis_url
from tests.kube import Cluster, wait_until
from tests.realengine.stories import find_trainer_env, note

__all__ = ["redis", "redis_url"]  # the integration suite's Redis fixtures, shared

# The tiny model trains a step in about 20 ms on an idle machine: without a pause the real trainers of this tier
# (run here and by the fleet, which passes its environment on) finish before a test can look at or interrupt them.
os.environ.setdefault("EBBTIDE_TRAINER_FAULT_STEP_DELAY_S", "0.4")


@pytest.fixture(scope="session")
def real_engine_env() -> RealEngineEnv:
    found = find_real_engine_env()
    if isinstance(found, str):
        absent(found.replace("the conformance tier", "the real-engine tier"))
    return found


@pytest.fixture(scope="session")
def tier_clock() -> Iterator[None]:
    t0 = time.monotonic()
    yield
    note("tier wall time (fixtures and stories)", time.monotonic() - t0)


@pytest.fixture(scope="session")
def cluster(real_engine_env: RealEngineEnv, tier_clock: None) -> Iterator[Cluster]:
    # Its own cluster folder: kwok leaves engine=vllm pods to this tier's fleet (`--real-engines`).
    c = _up(RUN / "realengine-cluster", "--real-engines")
    c.kubectl("apply", "-f", str(RUN.parent / "crds" / "manifests"))
    wait_until(
        "CRDs established",
        lambda: (
            c.kubectl("wait", "--for", "condition=established", "crd", "--all", "--timeout=30s", check=False).returncode
            == 0
        ),
        90,
    )
    c.kubectl("apply", "-f", str(RUN.parent / "crds" / "peering"))
    c.kubectl("apply", "-f", str(RUN.parent / "examples" / "priorityclasses.yaml"))
    yield c
    subprocess.run(
        [sys.executable, str(RUN.parent / "hack" / "cluster.py"), "down", "--dir", str(c.kubeconfig.parent)],
        check=False,
    )


@pytest.fixture(scope="session")
def operator(cluster: Cluster, redis_url: str) -> Iterator[Proc]:
    p = Proc(
        "realengine-operator",
        [
            sys.executable, str(RUN.parent / "operator" / "main.py"), "--kubeconfig", str(cluster.kubeconfig),
            "--metrics-port", str(_free_port()), "--health-port", str(_free_port()), "--resync-seconds", "3",
            "--peering-lifetime-seconds", "8", "--log-format", "plain", "--redis-url", redis_url,
            "--autoscale-interval-seconds", "2", "--metrics-url-template", "{engineURL}/metrics",
            "--deregistration-seconds", "3", "--default-cold-start-seconds", "60",
        ],
    )  # fmt: skip
    p.start()
    yield p
    p.kill(signal.SIGTERM)


@pytest.fixture(scope="session")
def fleet(cluster: Cluster, real_engine_env: RealEngineEnv) -> Iterator[Proc]:
    # The tiny model's folder stands for the pods' /models mount, so `pvc://<its name>` serves it.
    p = Proc(
        "realengine-fleet",
        [
            sys.executable, "-m", "simulator.fleet", "--kubeconfig", str(cluster.kubeconfig),
            "--state-dir", str(RUN / "realengine-fleet"), "--cold-start-scale", "100",
            "--vllm-env", str(real_engine_env.venv), "--models-dir", str(real_engine_env.model.parent),
            *(["--trainer-env", str(trainer)] if (trainer := find_trainer_env()) else []),
        ],
    )  # fmt: skip
    p.start()
    yield p
    # SIGTERM: the fleet kills the real engines' sessions on its way out.
    p.kill(signal.SIGTERM)


@pytest.fixture
def ns(cluster: Cluster, operator: Proc, fleet: Proc) -> Iterator[str]:
    """A fresh namespace per story; its services are deleted afterwards, so their real engines stop."""
    name = f"re-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    wait_until("default service account", lambda: cluster.exists("serviceaccount", "default", "-n", name), 30)
    yield name
    cluster.kubectl("delete", "llms,ftj", "--all", "-n", name, "--wait=false", check=False)
    # At most 2-3 real servers fit this machine: the next story starts once this one's are gone.
    wait_until("the story's pods gone", lambda: not cluster.get("pods", "-n", name)["items"], 120, 1.0)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
