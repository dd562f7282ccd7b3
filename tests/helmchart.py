"""Helm for tests: the pinned helm binary (built by `make binaries` before the tests) and chart rendering."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import ROOT

CHART = ROOT / "helm" / "ebbtide"


@functools.cache
def helm_binary() -> str:
    """The pinned helm from the binary cache; tests never build it (tests/conftest.py sets EBBTIDE_NO_BUILD)."""
    out = subprocess.run([str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(out.stderr.strip(), pytrace=False)
    return out.stdout.strip().splitlines()[-1]


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm; fail with its stderr when `check` and it exits non-zero."""
    argv = [helm_binary(), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def render(*sets: str, release: str = "eb", namespace: str = "ebbtide-system") -> list[dict[str, Any]]:
    """The chart's objects from `helm template`, each `sets` entry passed as --set."""
    argv = ["template", release, str(CHART), "--namespace", namespace]
    for s in sets:
        argv += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*argv).stdout) if d]


def find(objs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    """The one object of `kind` whose name ends with `suffix`."""
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(hits) == 1, f"expected one {kind} named *{suffix}, found {[o['metadata']['name'] for o in hits]}"
    return hits[0]


def service_link_env(objs: list[dict[str, Any]], namespace: str) -> dict[str, str]:
    """The variables the kubelet injects into a pod of `namespace` for each Service there (service links, on unless
    the pod sets enableServiceLinks: false), given the chart's Services fake ClusterIPs."""
    env: dict[str, str] = {}
    services = [o for o in objs if o["kind"] == "Service" and o["metadata"].get("namespace", namespace) == namespace]
    for n, svc in enumerate(services):
        spec = svc["spec"]
        ip = spec.get("clusterIP") or f"10.96.0.{n + 10}"
        if ip == "None" or not spec.get("ports"):
            continue
        name = svc["metadata"]["name"].upper().replace("-", "_")
        first = spec["ports"][0]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(first["port"])
        env[f"{name}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
        for port in spec["ports"]:
            proto = port.get("protocol", "TCP")
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
            base = f"{name}_PORT_{port['port']}_{proto}"
            env[base] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(port["port"])
            env[f"{base}_ADDR"] = ip
    return env
