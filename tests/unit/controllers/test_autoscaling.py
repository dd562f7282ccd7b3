"""The autoscaler shell's tuning: spec.scaling knobs reach the policy, and retuning keeps what it learned."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from autoscaler.metrics import ServiceMetricsCollector
from autoscaler.policies import EbbtideForecast, ReactiveTargetTracking
from autoscaler.store import MemoryStore
from autoscaler.types import SLO, ScalingBounds, ServiceObservation
from controllers.autoscaling import Autoscaler, policy_knobs
from tests.unit.controllers.builders import service


def autoscaler() -> Autoscaler:
    return Autoscaler(collector=ServiceMetricsCollector(scraper=None), store=MemoryStore())  # type: ignore[arg-type]


def scaling(**fields: object) -> dict[str, object]:
    return {"scaling": {"minReplicas": 1, "maxReplicas": 8, **fields}}


def obs(t: float, rate: float) -> ServiceObservation:
    return ServiceObservation(
        "svc", t, 2, 2, rate, rate * 500, rate * 200, queue_length=0, running=rate, kv_cache_usage=0.2
    )


def test_coverage_and_target_utilisation_reach_their_own_policy_only() -> None:
    assert policy_knobs(service(**scaling(forecastCoverage=0.9))) == {"risk": 0.1}
    assert policy_knobs(service(**scaling(policy="reactive", targetUtilization=0.8))) == {"target_utilization": 0.8}
    assert policy_knobs(service(**scaling(policy="reactive", forecastCoverage=0.9))) == {}
    assert policy_knobs(service(**scaling())) == {}


def test_forecast_policy_uses_the_coverage_set_in_the_spec() -> None:
    scaler = autoscaler().scaler_for("ns/svc", service(**scaling(forecastCoverage=0.75)))
    assert isinstance(scaler.policy, EbbtideForecast)
    assert scaler.policy.risk == pytest.approx(0.25)
    reactive = autoscaler().scaler_for("ns/svc", service(**scaling(policy="reactive", targetUtilization=0.5)))
    assert isinstance(reactive.policy, ReactiveTargetTracking)
    assert reactive.policy.target_utilization == 0.5


def test_retuning_the_coverage_keeps_the_learned_history() -> None:
    shell = autoscaler()
    before = shell.scaler_for("ns/svc", service(**scaling(forecastCoverage=0.9)))
    assert shell.scaler_for("ns/svc", service(**scaling(forecastCoverage=0.9))) is before
    for i in range(40):
        before.policy.decide(obs(30.0 * i, 10.0 + i % 3), ScalingBounds(max_replicas=8), SLO())
    learned = before.policy.to_state()  # type: ignore[attr-defined]
    after = shell.scaler_for("ns/svc", service(**scaling(forecastCoverage=0.99)))
    assert after is not before and after.policy.risk == pytest.approx(0.01)  # type: ignore[attr-defined]
    assert after.policy.to_state() == learned  # type: ignore[attr-defined]


def test_out_of_range_knobs_are_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="forecastCoverage"):
        service(**scaling(forecastCoverage=1.5))
    with pytest.raises(ValidationError, match="targetUtilization"):
        service(**scaling(policy="reactive", targetUtilization=0))
