"""The power manager's translation: DCGM readings and pods -> the core's GPUs, the core's plan -> PowerBudget
status, conditions, Events and node caps."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler.capacity import EngineProfile
from autoscaler.power import PowerCapper
from autoscaler.types import SLO, ServiceObservation
from catalogue.gpus import GPU_PRODUCT_LABEL
from controllers.planners.power import (
    GPUSample,
    NodeGPUs,
    Workload,
    budget_status,
    domains,
    gpu_states,
    node_annotations,
    service_caps,
    workload_of,
)
from crds.powerbudget import PowerBudget
from crds.reasons import ConditionType, EventType, Reason

H100 = "NVIDIA-H100-80GB-HBM3"
NODES = [
    NodeGPUs("rack-a-0", {GPU_PRODUCT_LABEL: H100, "rack": "a"}, 2),
    NodeGPUs("rack-a-1", {GPU_PRODUCT_LABEL: H100, "rack": "a"}, 2),
    NodeGPUs("rack-b-0", {GPU_PRODUCT_LABEL: H100, "rack": "b"}, 2),
]
WORK = {
    ("prod", "chat-0"): Workload("prod/chat", priority=1000),
    ("batch", "code-0"): Workload("batch/code", priority=0, demand_ratio=1.5),
}


def budget(watts: float, **spec: Any) -> PowerBudget:
    return PowerBudget.model_validate(
        {"metadata": {"name": "rack-a", "generation": 2}, "spec": {"budgetWatts": watts, **spec}}
    )


def samples(draw: float = 600.0) -> dict[str, list[GPUSample]]:
    return {
        "rack-a-0": [GPUSample(0, draw, 700.0, ("prod", "chat-0")), GPUSample(1, draw, 700.0, ("prod", "chat-0"))],
        "rack-a-1": [GPUSample(0, draw, 700.0, ("batch", "code-0")), GPUSample(1, 70.0, 700.0)],
    }


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_domains_take_the_gpus_of_the_nodes_the_selector_matches() -> None:
    (d,) = domains([budget(2000, nodeSelector={"rack": "a"}, policy={"floorWattsPerGpu": 250})], NODES)
    assert d.members == (("rack-a-0", 0), ("rack-a-0", 1), ("rack-a-1", 0), ("rack-a-1", 1))
    assert d.floor_w == 250 and d.budget_w == 2000


def test_gpu_states_join_dcgm_readings_with_pods_and_scale_draw_by_the_forecast() -> None:
    gpus = {g.key: g for g in gpu_states(NODES, samples(), WORK)}
    chat, code, idle = gpus[("rack-a-0", 0)], gpus[("rack-a-1", 0)], gpus[("rack-a-1", 1)]
    assert chat.workload == "prod/chat" and chat.priority == 1000 and chat.limit_w is None
    assert chat.forecast_w == pytest.approx(600.0)
    assert code.forecast_w == pytest.approx(min(700.0, 70 + 530 * 1.5))
    assert idle.workload is None and idle.drawn_w == 70.0
    assert ("rack-b-0", 0) not in gpus  # no DCGM reading, not measured


def test_workload_slack_and_prefill_share_come_from_the_engine_metrics() -> None:
    obs = ServiceObservation(
        service="prod/chat", now=0.0, replicas=1, ready_replicas=1, request_rate=4.0, prompt_token_rate=1000.0,
        generation_token_rate=3000.0, queue_length=0, running=4, kv_cache_usage=0.2, ttft_p95_s=1.0, itl_p95_s=0.12,
    )  # fmt: skip
    profile = EngineProfile(request_rate=5.0, prompt_token_rate=10_000.0, generation_token_rate=1_000.0)
    w = workload_of("prod/chat", 1000, obs, SLO(ttft_s=2.0, itl_s=0.1), profile, forecast_rps=6.0)
    assert w.slo_slack == pytest.approx(1 - 1.2)  # ITL misses its SLO by 20%
    assert w.prefill_share == pytest.approx(0.1 / (0.1 + 3.0))  # decode-heavy
    assert w.demand_ratio == pytest.approx(1.5)
    assert workload_of("x/y", 5, None, None, None, None) == Workload("x/y", 5)


def test_status_conditions_events_and_caps_of_a_capping_domain() -> None:
    pb = budget(1600, nodeSelector={"rack": "a"})
    gpus = gpu_states(NODES, samples(480.0), {**WORK, ("batch", "code-0"): Workload("batch/code", demand_ratio=1.4)})
    gpus = [g for g in gpus if g.node != "rack-b-0"]
    plan = PowerCapper().tick(100.0, domains([pb], NODES), gpus)
    status, events = budget_status({}, plan.domains["rack-a"], 100.0, 2)
    assert cond(status, ConditionType.CAPPING)["status"] == "True"
    assert cond(status, ConditionType.WITHIN_BUDGET)["status"] == "False"
    assert cond(status, ConditionType.WITHIN_BUDGET)["reason"] == Reason.CAPPING
    assert list(status["caps"]) == ["rack-a-1"]  # the low-priority service's GPUs only
    assert status["forecastWatts"] <= 1600 and status["drawnWatts"] == pytest.approx(3 * 480 + 70)
    kinds = [(t, r) for t, r, _ in events]
    assert (EventType.NORMAL, Reason.CAPPING) in kinds and (EventType.NORMAL, Reason.CAPS_CHANGED) in kinds
    moved = next(m for _, r, m in events if r == Reason.CAPS_CHANGED)
    assert "rack-a-1/0 default ->" in moved
    again, quiet = budget_status(status, plan.domains["rack-a"], 101.0, 2)
    assert quiet == [] and again["caps"] == status["caps"]
    annotations = node_annotations(plan, gpus)
    assert set(annotations) == {"rack-a-1"} and annotations["rack-a-1"][0] is not None
    assert service_caps(plan, gpus) == {"prod/chat": None, "batch/code": plan.caps[("rack-a-1", 0)]}


def test_infeasible_budget_warns_with_the_numbers() -> None:
    pb = budget(300, policy={"floorWattsPerGpu": 200})
    gpus = gpu_states(NODES, samples(), WORK)
    plan = PowerCapper().tick(0.0, domains([pb], NODES), gpus)
    status, events = budget_status({}, plan.domains["rack-a"], 0.0, 1)
    assert cond(status, ConditionType.INFEASIBLE)["status"] == "True"
    (warning,) = [e for e in events if e[1] == Reason.INFEASIBLE]
    # Three working GPUs at their 200 W floors and an idle one at 70 W.
    assert warning[0] == EventType.WARNING and "300 W" in warning[2] and "670 W" in warning[2]
