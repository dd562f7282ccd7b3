"""The autoscaler shell: spec.scaling knobs reach the policy, retuning keeps what it learned, and the
whole-cluster forecast keeps its history and state in the store."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from pydantic import ValidationError

from adapters.engine_metrics import ServiceMetricsCollector
from adapters.store import MemoryStore
from autoscaler.forecast import EbbtideForecaster
from autoscaler.policies import EbbtideForecast, ReactiveTargetTracking
from autoscaler.types import SLO, ScalingBounds, ServiceObservation
from controllers.shells.autoscaling import CLUSTER, Autoscaler, policy_knobs
from tests.unit.controllers.builders import service


def autoscaler(store: MemoryStore | None = None) -> Autoscaler:
    return Autoscaler(
        collector=ServiceMetricsCollector(scraper=None),  # type: ignore[arg-type]
        store=store or MemoryStore(),
        interval_s=30.0,
    )


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


async def test_the_cluster_forecast_keeps_its_history_and_state_in_the_store() -> None:
    store = MemoryStore()
    shell = autoscaler(store)
    for k in range(20):
        for svc, rate in (("a/chat", 4.0), ("b/code", 2.0 + k % 3)):
            shell.cluster.observe(svc, obs(30.0 * k, rate), 210.0)
            await shell.tick_cluster(30.0 * k)
    history = await store.range(CLUSTER, "request_rate", 0.0, 600.0)
    # Each feed sums every service's latest rates: b/code's from its tick one interval before.
    assert len(history) == 20 and history[-1][1] == pytest.approx(4.0 + 2.0 + 18 % 3)
    assert shell.cluster.last is not None and shell.cluster.last.services == 2

    restarted = autoscaler(store)
    restarted.cluster.observe("a/chat", obs(600.0, 4.0), 210.0)
    await restarted.tick_cluster(600.0)
    # The forecaster resumed from the state saved at the 20th feed, then saw one more.
    assert restarted.cluster.to_state()["forecaster"]["n"] == 21


async def test_a_failing_cluster_forecaster_does_not_stop_the_services() -> None:
    class Broken(EbbtideForecaster):
        def observe(self, t: float, values: Mapping[str, float]) -> None:
            raise RuntimeError("boom")

    shell = autoscaler()
    shell.cluster.forecaster = Broken()
    shell.cluster.observe("a/chat", obs(0.0, 4.0), 210.0)
    assert await shell.tick_cluster(0.0) is None
