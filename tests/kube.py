"""Helpers for tests that talk to a real cluster: kubectl, JSON reads and polling (no mocks)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "scenarios"
# The schema-valid but impossible specs in tests/scenarios/semantic and the Ready reason each must get.
SEMANTIC_REASONS = {"too-big": "ModelDoesNotFit", "unknown-gpu": "UnknownGPUType", "no-prio": "PriorityClassNotFound"}


@dataclass
class Cluster:
    """A cluster reachable through a kubeconfig and a kubectl binary."""

    kubeconfig: Path
    kubectl_bin: str

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def exists(self, *args: str) -> bool:
        return self.kubectl("get", *args, check=False).returncode == 0


def wait_until(what: str, fn: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5) -> T:
    """Poll `fn` until it returns something truthy; fail with `what` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except AssertionError as e:
            last = e
        if last and not isinstance(last, AssertionError):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c.get("type") == type_), None)


def invalid_scenarios() -> list[Path]:
    """Specs the API server must reject; each names the field its error must mention (`# expect: field`)."""
    return sorted((SCENARIOS / "invalid").glob("*.yaml"))


def expected_field(path: Path) -> str:
    found = re.search(r"# expect: (\S+)", path.read_text())
    assert found, f"{path.name} must say which field it breaks"
    return found.group(1)


def semantic_reasons_reported(c: Cluster, ns: str) -> bool:
    """Every semantic scenario in `ns` reports Ready=False with its expected reason."""
    for name, reason in SEMANTIC_REASONS.items():
        ready = condition(c.get("llms", name, "-n", ns), "Ready")
        if not ready or ready["status"] != "False" or ready["reason"] != reason:
            return False
    return True
