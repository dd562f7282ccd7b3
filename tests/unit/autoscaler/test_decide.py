"""The Bayesian choice and the guard rails: newsvendor optimum, bounds, stabilization, flapping, holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoscaler.capacity import CapacityLearner
from autoscaler.decide import (
    CostModel,
    Governor,
    GovernorConfig,
    choose_replicas,
    clamp,
    hold_decision,
    need_samples,
)
from autoscaler.forecast import GENERATION_TOKEN_RATE, PROMPT_TOKEN_RATE, QUANTILE_LEVELS, REQUEST_RATE, Forecast
from crds.reasons import Reason

from .builders import PROFILE, SLO_DEFAULT, bounds, obs


def _forecast(rates: np.ndarray, prompt_per_request: float = 500.0) -> Forecast:
    samples = {
        REQUEST_RATE: rates,
        PROMPT_TOKEN_RATE: rates * prompt_per_request,
        GENERATION_TOKEN_RATE: rates * 150.0,
    }
    quantiles = {k: {q: float(np.quantile(v, q)) for q in QUANTILE_LEVELS} for k, v in samples.items()}
    return Forecast(0.0, 210.0, quantiles, samples, "test")


class TestChoice:
    def test_newsvendor_picks_the_critical_quantile(self) -> None:
        need = np.linspace(0.0, 10.0, 1001)  # uniform on [0, 10]
        for attainment, expected in ((0.5, 5), (0.9, 9), (0.99, 10)):
            choice = choose_replicas(need, 0, 100, CostModel(), attainment)
            assert choice.replicas == expected
            assert choice.target == pytest.approx(attainment)
            assert choice.risk <= 1.0 - attainment + 1e-9

    def test_explicit_costs_override_the_slo(self) -> None:
        need = np.linspace(0.0, 10.0, 1001)
        cheap_penalty = CostModel(replica_cost=1.0, violation_penalty=2.0)  # critical ratio 0.5
        assert choose_replicas(need, 0, 100, cheap_penalty, 0.999).replicas == 5

    def test_penalty_from_attainment(self) -> None:
        assert CostModel(replica_cost=2.0).penalty(0.99) == pytest.approx(200.0)
        assert CostModel(replica_cost=2.0).critical_ratio(0.99) == pytest.approx(0.99)

    def test_bounds_of_the_search(self) -> None:
        need = np.full(50, 30.0)
        assert choose_replicas(need, 1, 8, CostModel(), 0.99).replicas == 8
        assert choose_replicas(np.zeros(50), 2, 8, CostModel(), 0.99).replicas == 2
        with pytest.raises(ValueError, match="empty"):
            choose_replicas(need, 5, 4, CostModel(), 0.99)

    def test_need_takes_the_binding_dimension_and_the_peak_horizon(self) -> None:
        cap = CapacityLearner(PROFILE).estimate(SLO_DEFAULT)
        flat = _forecast(np.full(10, 4.0))
        long_prompts = _forecast(np.full(10, 4.0), prompt_per_request=2000.0)
        assert need_samples([flat], cap) == pytest.approx(np.full(10, 2.0))
        assert need_samples([long_prompts], cap) == pytest.approx(np.full(10, 4.0))
        later = _forecast(np.linspace(4.0, 8.0, 10))
        assert need_samples([flat, later], cap).max() == pytest.approx(4.0)
        assert need_samples([flat], cap, backlog_rps=2.0) == pytest.approx(np.full(10, 3.0))


class TestGovernor:
    def test_bounds(self) -> None:
        b = bounds(min_replicas=2, max_replicas=5)
        g = Governor()
        assert g.apply(0.0, 3, 9, b)[0] == 5
        assert g.apply(400.0, 3, 0, b)[0] == 2
        assert clamp(0, bounds(min_replicas=0, scale_to_zero=False)) == 1

    def test_the_replicas_in_place_count_on_the_first_look(self) -> None:
        g = Governor()
        b = bounds(scale_down_stabilization_s=300.0)
        assert g.apply(0.0, 10, 1, b)[0] == 10  # a young policy seeing one quiet tick must not drop a warm service
        assert g.apply(330.0, 10, 1, b)[0] == 1

    def test_scale_down_waits_for_the_stabilization_window(self) -> None:
        g = Governor()
        b = bounds(scale_down_stabilization_s=300.0)
        assert g.apply(0.0, 4, 8, b)[0] == 8
        n, notes = g.apply(30.0, 8, 3, b)
        assert n == 8 and "stabilized" in notes[0]
        assert g.apply(290.0, 8, 3, b)[0] == 8
        assert g.apply(331.0, 8, 3, b)[0] == 3  # the 8 has left the window

    def test_scale_up_is_rate_limited_like_hpa(self) -> None:
        g = Governor()
        assert g.apply(0.0, 2, 20, bounds(max_replicas=50))[0] == 6  # max(2 x 2, 2 + 4)
        assert g.apply(30.0, 6, 20, bounds(max_replicas=50))[0] == 12

    def test_flapping_is_bounded(self) -> None:
        g = Governor(GovernorConfig(max_reversals_per_hour=3))
        b = bounds(scale_down_stabilization_s=0.0)
        current, t = 4, 0.0
        changes = []
        for i in range(20):
            t += 60.0
            n, _ = g.apply(t, current, 6 if i % 2 == 0 else 4, b)
            changes.append(n != current)
            current = n
        assert sum(changes) <= 5  # up, down, up, down, up: then scale-downs look back over the flap window
        assert current == 6  # held high, the safe side
        for _ in range(11):  # demand really falls: scale-in resumes once the flap window has passed
            t += 60.0
            current, _ = g.apply(t, current, 4, b)
        assert current == 4

    def test_scale_to_zero_only_when_allowed_twice(self) -> None:
        g = Governor()
        no_zero = bounds(min_replicas=0, scale_to_zero=False, scale_down_stabilization_s=0.0)
        zero = bounds(min_replicas=0, scale_to_zero=True, scale_down_stabilization_s=0.0)
        assert g.apply(0.0, 1, 0, no_zero, allow_zero=True)[0] == 1
        n, notes = g.apply(10.0, 1, 0, zero, allow_zero=False)
        assert n == 1 and "not scaling to zero" in notes[0]
        assert g.apply(20.0, 1, 0, zero, allow_zero=True)[0] == 0

    def test_state_round_trips(self) -> None:
        g = Governor()
        g.apply(0.0, 4, 8, bounds())
        copy = Governor.from_state(json.loads(json.dumps(g.to_state())))
        assert copy.apply(30.0, 8, 3, bounds()) == g.apply(30.0, 8, 3, bounds())


class TestHold:
    def test_holds_current_and_never_drops_to_zero(self) -> None:
        b = bounds(min_replicas=0, scale_to_zero=True)
        d = hold_decision(obs(replicas=3, stale=True), b, "metrics stale or missing", cause=Reason.METRICS_UNAVAILABLE)
        assert d.replicas == 3 and d.degraded == "metrics stale or missing"
        assert d.reason.startswith("degraded: metrics stale")

    def test_raises_for_load_already_seen_and_respects_max(self) -> None:
        assert hold_decision(obs(replicas=3), bounds(), "x", cause=Reason.METRICS_UNAVAILABLE, floor=5).replicas == 5
        assert (
            hold_decision(obs(replicas=30), bounds(max_replicas=20), "x", cause=Reason.METRICS_UNAVAILABLE).replicas
            == 20
        )

    def test_zero_stays_zero(self) -> None:
        b = bounds(min_replicas=0, scale_to_zero=True)
        assert (
            hold_decision(
                obs(replicas=0, ready_replicas=0, rate=0.0), b, "x", cause=Reason.METRICS_UNAVAILABLE
            ).replicas
            == 0
        )


def test_matches_brute_force_on_a_skewed_distribution() -> None:
    need = np.random.default_rng(0).gamma(4.0, 2.0, size=200)
    choice = choose_replicas(need, 0, 1000, CostModel(), 0.99)
    smallest = next(n for n in range(1001) if np.mean(need <= n) >= 0.99)
    assert choice.replicas == smallest
