"""The benchmark-only baselines (bench/autoscaler/baselines.py): KPA-like, point forecast, oracle, static peak,
and the registry that adds them to the production policies for the benchmark."""

from __future__ import annotations

import pytest

from autoscaler.policies import POLICIES, EbbtideForecast
from bench.autoscaler.baselines import (
    BASELINES,
    KPALike,
    Oracle,
    PointForecast,
    StaticPeak,
    make_baseline,
)
from tests.unit.autoscaler.builders import PROFILE, SLO_DEFAULT, bounds, drive, obs


class TestKPA:
    def test_panics_on_a_burst_and_does_not_scale_down_in_panic(self) -> None:
        policy = KPALike(concurrency_per_replica=10.0, target_utilization=1.0)
        b = bounds(scale_down_stabilization_s=0.0, max_replicas=50)
        calm = policy.decide(obs(now=0.0, rate=1.0, replicas=2, running=20.0), b, SLO_DEFAULT)
        assert calm.replicas == 2
        burst = policy.decide(obs(now=30.0, rate=5.0, replicas=2, running=80.0), b, SLO_DEFAULT)
        assert burst.replicas == 8 and "panic" in burst.reason
        after = policy.decide(obs(now=60.0, rate=1.0, replicas=8, running=10.0), b, SLO_DEFAULT)
        assert after.replicas == 8  # still in panic: no scale-down

    def test_stable_mode_follows_the_window_average(self) -> None:
        policy = KPALike(concurrency_per_replica=10.0, target_utilization=1.0)
        b = bounds(scale_down_stabilization_s=0.0)
        policy.decide(obs(now=0.0, replicas=3, running=30.0), b, SLO_DEFAULT)
        d = policy.decide(obs(now=30.0, replicas=3, running=10.0), b, SLO_DEFAULT)
        assert d.replicas == 2 and "stable" in d.reason


class TestPointForecast:
    def test_headroom_is_the_knob(self) -> None:
        no_margin = drive(PointForecast(PROFILE, headroom=0.0), [4.0] * 40)
        margin = drive(PointForecast(PROFILE, headroom=0.3), [4.0] * 40)
        assert no_margin[-1].replicas == 2
        assert margin[-1].replicas == 3
        assert no_margin[-1].forecast_quantiles["p50"] == pytest.approx(4.0, rel=0.01)


class TestOracle:
    def test_sees_the_peak_within_the_lead_time(self) -> None:
        def load(t: float) -> dict[str, float]:
            return {"request_rate": 20.0 if 100.0 <= t < 130.0 else 2.0}

        policy = Oracle(load, PROFILE)
        assert policy.decide(obs(now=0.0, replicas=1), bounds(), SLO_DEFAULT).replicas == 10
        assert policy.decide(obs(now=200.0, replicas=10), bounds(), SLO_DEFAULT).replicas == 1


class TestRegistry:
    def test_baselines_extend_the_production_registry_and_name_their_knob(self) -> None:
        assert set(POLICIES) < set(BASELINES)
        assert {"static-peak", "kpa", "point-forecast", "oracle"} == set(BASELINES) - set(POLICIES)
        for cls in (KPALike, PointForecast, Oracle, StaticPeak):
            assert cls.KNOB, cls.__name__

    def test_make_baseline(self) -> None:
        assert isinstance(make_baseline("forecast", profile=PROFILE, risk=0.05), EbbtideForecast)
        assert isinstance(make_baseline("static-peak", replicas=3), StaticPeak)
        with pytest.raises(ValueError, match="unknown scaling policy"):
            make_baseline("magic")

    def test_static_peak_stays_within_the_bounds(self) -> None:
        assert StaticPeak(7).decide(obs(replicas=2), bounds(max_replicas=5), SLO_DEFAULT).replicas == 5
