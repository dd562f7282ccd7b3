"""Scaling policies through the ScalingPolicy contract: Ebbtide's, reactive, safety and the registry (the
benchmark-only baselines are tested in tests/unit/bench/test_autoscaler_baselines.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoscaler.forecast import Forecast, NaiveForecaster
from autoscaler.policies import (
    CRD_POLICIES,
    POLICIES,
    STALE,
    STORE_DOWN,
    EbbtideForecast,
    NoScaling,
    ReactiveTargetTracking,
    make_policy,
)

from .builders import PROFILE, SLO_DEFAULT, TICK, bounds, drive, obs


def noisy(level: float, n: int, seed: int = 0, sigma: float = 0.1) -> list[float]:
    rng = np.random.default_rng(seed)
    return [level * math.exp(rng.normal(0.0, sigma)) for _ in range(n)]


class TestEbbtideForecast:
    def test_steady_load_gets_enough_replicas_and_an_explanation(self) -> None:
        decisions = drive(EbbtideForecast(PROFILE), noisy(4.0, 200))
        last = decisions[-1]
        assert last.degraded is None
        assert 2 <= last.replicas <= 4  # 4 req/s at 2 req/s per replica, plus a margin for the noise
        assert last.risk is not None and last.risk <= 0.02
        assert last.capacity_rps == pytest.approx(2.0, rel=0.05)
        q = last.forecast_quantiles
        assert q["horizon_s"] == 210.0 and q["p10"] <= q["p50"] <= q["p90"] <= q["p99"]
        assert "replicas needed" in last.reason and "risk" in last.reason

    def test_a_one_tick_spike_moves_less_than_a_sustained_level(self) -> None:
        spike = drive(EbbtideForecast(PROFILE), [*noisy(6.0, 60), 30.0, 6.0], bounds(max_replicas=64), replicas=4)
        level = drive(EbbtideForecast(PROFILE), noisy(6.0, 60) + [30.0] * 8, bounds(max_replicas=64), replicas=4)
        assert spike[-1].replicas < level[-1].replicas

    def test_more_risk_costs_fewer_replicas(self) -> None:
        totals = []
        for risk in (0.01, 0.1, 0.3):
            totals.append(sum(d.replicas for d in drive(EbbtideForecast(PROFILE, risk=risk), noisy(12.0, 300))))
        assert totals[0] >= totals[1] >= totals[2]
        assert totals[0] > totals[2]

    def test_scales_ahead_of_a_ramp(self) -> None:
        flat = [4.0] * 240
        ramp = [4.0 + 0.05 * i for i in range(120)]  # +6 req/s an hour, for an hour
        rates = flat + ramp
        ebbtide = drive(EbbtideForecast(PROFILE), rates)
        reactive = drive(ReactiveTargetTracking(PROFILE, target_utilization=0.9), rates)
        i = len(rates) - 1
        lead_ticks = 7
        need_at_arrival = math.ceil((rates[i] + 0.05 * lead_ticks) / 2.0)
        assert ebbtide[i].replicas >= need_at_arrival
        assert sum(d.replicas for d in ebbtide[240:]) > sum(d.replicas for d in reactive[240:])

    def test_stale_metrics_hold_and_never_scale_to_zero(self) -> None:
        b = bounds(min_replicas=0, scale_to_zero=True)
        policy = EbbtideForecast(PROFILE)
        drive(policy, [0.0] * 10, b, replicas=3)
        d = policy.decide(obs(now=400.0, rate=0.0, replicas=3, stale=True), b, SLO_DEFAULT)
        assert d.replicas == 3
        assert d.degraded == STALE

    def test_store_down_holds_but_still_adds_for_load_already_seen(self) -> None:
        policy = EbbtideForecast(PROFILE)
        drive(policy, [4.0] * 20)
        held = policy.decide(obs(now=700.0, rate=4.0, replicas=3, history_available=False), bounds(), SLO_DEFAULT)
        assert (held.replicas, held.degraded) == (3, STORE_DOWN)
        overloaded = policy.decide(
            obs(now=730.0, rate=20.0, replicas=3, history_available=False, ttft_p95_s=6.0), bounds(), SLO_DEFAULT
        )
        assert overloaded.replicas >= 10 and overloaded.degraded == STORE_DOWN

    def test_recovers_when_data_returns(self) -> None:
        policy = EbbtideForecast(PROFILE)
        drive(policy, [4.0] * 20)
        stale = drive(policy, [4.0] * 5, start=600.0, replicas=3, stale=True)
        assert all(d.degraded == STALE and d.replicas == 3 for d in stale)
        fresh = drive(policy, [4.0] * 3, start=750.0, replicas=3)
        assert fresh[-1].degraded is None

    def test_a_failing_forecaster_holds_replicas(self) -> None:
        class Broken(NaiveForecaster):
            def forecast(self, horizon_s: float) -> Forecast:
                raise RuntimeError("fit diverged")

        policy = EbbtideForecast(PROFILE, forecaster=Broken())
        d = policy.decide(obs(rate=4.0, replicas=3), bounds(), SLO_DEFAULT)
        assert d.replicas == 3
        assert d.degraded == "forecast failed: RuntimeError: fit diverged"

    def test_first_tick_has_no_forecast_yet_only_a_warming_one(self) -> None:
        d = EbbtideForecast(PROFILE).decide(obs(rate=4.0, replicas=2), bounds(), SLO_DEFAULT)
        assert d.degraded is None and d.replicas >= 2
        assert "warming up" in d.reason

    def test_scale_to_zero_after_idling_only_when_allowed(self) -> None:
        idle = [0.0] * 60
        allowed = bounds(min_replicas=0, scale_to_zero=True, scale_down_stabilization_s=300.0)
        decisions = drive(EbbtideForecast(PROFILE), idle, allowed)
        assert decisions[-1].replicas == 0
        first_zero = next(i for i, d in enumerate(decisions) if d.replicas == 0)
        assert first_zero * TICK >= 300.0  # not before the stabilization window
        assert drive(EbbtideForecast(PROFILE), idle, bounds(min_replicas=0))[-1].replicas == 1

    def test_no_scale_to_zero_while_demand_is_forecast(self) -> None:
        allowed = bounds(min_replicas=0, scale_to_zero=True, scale_down_stabilization_s=0.0)
        decisions = drive(EbbtideForecast(PROFILE), [0.05] * 60, allowed)
        assert all(d.replicas >= 1 for d in decisions)

    def test_wakes_from_zero_when_requests_wait(self) -> None:
        b = bounds(min_replicas=0, scale_to_zero=True)
        policy = EbbtideForecast(PROFILE)
        drive(policy, [0.0] * 30, b, replicas=0)
        d = policy.decide(obs(now=900.0, rate=0.0, replicas=0, ready_replicas=0, queue_length=3.0), b, SLO_DEFAULT)
        assert d.replicas >= 1

    def test_reports_an_unattainable_slo(self) -> None:
        decisions = drive(EbbtideForecast(PROFILE), [0.5] * 20, replicas=2, ttft_p95_s=3.5)
        assert decisions[-1].slo_attainable is False
        assert "SLO unattainable" in decisions[-1].reason

    def test_same_inputs_same_decisions(self) -> None:
        rates = noisy(6.0, 150, seed=4)
        a = drive(EbbtideForecast(PROFILE), rates)
        b = drive(EbbtideForecast(PROFILE), rates)
        assert [(d.replicas, d.reason) for d in a] == [(d.replicas, d.reason) for d in b]

    def test_restored_policy_decides_like_the_original(self) -> None:
        original = EbbtideForecast(PROFILE)
        drive(original, noisy(6.0, 100, seed=5))
        copy = EbbtideForecast(PROFILE)
        copy.restore(json.loads(json.dumps(original.to_state())))
        nxt = obs(now=100 * TICK, rate=7.0, replicas=4)
        assert copy.decide(nxt, bounds(), SLO_DEFAULT) == original.decide(nxt, bounds(), SLO_DEFAULT)

    def test_rejects_a_meaningless_risk(self) -> None:
        with pytest.raises(ValueError, match="risk"):
            EbbtideForecast(PROFILE, risk=1.5)


class TestReactive:
    def test_hpa_formula_and_tolerance(self) -> None:
        policy = ReactiveTargetTracking(PROFILE, target_utilization=0.5)
        assert policy.decide(obs(rate=8.0, replicas=4), bounds(), SLO_DEFAULT).replicas == 8
        near = ReactiveTargetTracking(PROFILE, target_utilization=0.7)
        assert near.decide(obs(rate=5.76, replicas=4), bounds(), SLO_DEFAULT).replicas == 4  # 72% vs 70%

    def test_scale_down_is_stabilized(self) -> None:
        policy = ReactiveTargetTracking(PROFILE, target_utilization=0.5)
        decisions = drive(policy, [8.0] + [2.0] * 12, replicas=8)
        assert [d.replicas for d in decisions[:10]] == [8] * 10
        assert decisions[-1].replicas == 2

    def test_stale_holds(self) -> None:
        d = ReactiveTargetTracking(PROFILE).decide(obs(rate=50.0, replicas=3, stale=True), bounds(), SLO_DEFAULT)
        assert (d.replicas, d.degraded) == (3, STALE)


class TestRegistry:
    def test_the_registry_holds_exactly_what_a_user_can_select(self) -> None:
        assert set(POLICIES) == set(CRD_POLICIES) == {"forecast", "reactive", "none"}
        for cls in (EbbtideForecast, ReactiveTargetTracking):
            assert cls.KNOB, cls.__name__

    def test_make_policy(self) -> None:
        assert isinstance(make_policy("forecast", profile=PROFILE, risk=0.05), EbbtideForecast)
        assert isinstance(make_policy("none"), NoScaling)
        with pytest.raises(ValueError, match="unknown scaling policy"):
            make_policy("magic")

    def test_none_reports_the_replicas_unchanged(self) -> None:
        assert NoScaling().decide(obs(replicas=13), bounds(), SLO_DEFAULT).replicas == 13


def test_decision_cores_import_no_io_libraries() -> None:
    # The same cores run in the simulator and in unit tests: they must not pull in network or cluster clients.
    code = (
        "import sys\n"
        "import autoscaler.forecast, autoscaler.capacity, autoscaler.decide, autoscaler.policies\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'httpx', 'redis', 'kubernetes', 'kopf', 'prometheus_client', 'aiohttp'})\n"
        "print(','.join(bad))\n"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
