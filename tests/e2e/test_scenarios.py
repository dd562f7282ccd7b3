"""The shared scenarios (examples/, tests/scenarios/) against whatever cluster the e2e suite was given."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import (
    ROOT,
    SCENARIOS,
    Cluster,
    condition,
    expected_field,
    invalid_scenarios,
    semantic_reasons_reported,
    wait_until,
)

EXAMPLES = ROOT / "examples"
# Real clusters pull images and load weights; the simulated fleet is faster. Generous but bounded.
READY_TIMEOUT = 300


def ready_replicas(c: Cluster, ns: str, name: str, replicas: int) -> bool:
    obj: dict[str, Any] = c.get("llms", name, "-n", ns)
    ready, st = condition(obj, "Ready"), obj.get("status") or {}
    return bool(ready and ready["status"] == "True" and st.get("readyReplicas") == replicas == st.get("replicas"))


@pytest.mark.parametrize("path", invalid_scenarios(), ids=lambda p: p.stem)
def test_invalid_spec_is_rejected_naming_the_field(live: Cluster, e2e_ns: str, path: Path) -> None:
    field = expected_field(path)
    proc = live.kubectl("apply", "--dry-run=server", "-n", e2e_ns, "-f", str(path), check=False)
    assert proc.returncode != 0, f"{path.name} was accepted"
    assert field in proc.stderr, proc.stderr


def test_impossible_specs_report_ready_false_with_a_reason(live: Cluster, e2e_ns: str) -> None:
    for path in sorted((SCENARIOS / "semantic").glob("*.yaml")):
        live.kubectl("apply", "-n", e2e_ns, "-f", str(path))

    wait_until("Ready=False with the expected reasons", lambda: semantic_reasons_reported(live, e2e_ns), 90)
    assert live.get("pods", "-n", e2e_ns, "-l", "ebbtide.dev/service=too-big")["items"] == []


def test_dense_service_becomes_ready_and_scales_with_kubectl(live: Cluster, e2e_ns: str) -> None:
    live.kubectl("apply", "-n", e2e_ns, "-f", str(EXAMPLES / "dense-service.yaml"))
    wait_until("2 replicas Ready", lambda: ready_replicas(live, e2e_ns, "llama3-8b", 2), READY_TIMEOUT)
    assert live.exists("service", "llama3-8b", "-n", e2e_ns)
    assert live.exists("pdb", "llama3-8b", "-n", e2e_ns)

    live.kubectl("scale", "-n", e2e_ns, "llms/llama3-8b", "--replicas=1")
    wait_until("scaled in to 1", lambda: ready_replicas(live, e2e_ns, "llama3-8b", 1), READY_TIMEOUT)


def test_finetune_job_runs_to_success(live: Cluster, e2e_ns: str) -> None:
    manifest = (EXAMPLES / "finetune-job.yaml").read_text().replace("totalSteps: 300", "totalSteps: 40")
    live.kubectl("apply", "-n", e2e_ns, "-f", "-", stdin=manifest)

    def phase() -> str | None:
        return (live.get("ftj", "support-bot-lora", "-n", e2e_ns).get("status") or {}).get("phase")

    wait_until("Succeeded", lambda: phase() == "Succeeded", READY_TIMEOUT)
    assert live.get("ftj", "support-bot-lora", "-n", e2e_ns)["status"]["step"] == 40


def test_power_budget_reports_its_domain(live: Cluster) -> None:
    doc = yaml.safe_load((EXAMPLES / "power-budget.yaml").read_text())
    # PowerBudgets are cluster-scoped: a unique name keeps runs and clusters apart.
    doc["metadata"]["name"] = f"e2e-{uuid.uuid4().hex[:6]}"
    name = doc["metadata"]["name"]
    live.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    try:
        ready = wait_until(
            "PowerBudget reported",
            lambda: condition(live.get("pb", name), "Ready"),
            60,
        )
        assert ready["reason"] in ("Reported", "NoNodesMatched"), ready
        if ready["reason"] == "Reported":
            assert live.get("pb", name)["status"]["gpus"] > 0
    finally:
        live.kubectl("delete", "pb", name, "--wait=false", check=False)
