"""The scaling loop around a policy: knobs, bounds and measured cold start, stale observations, state cadence,
and catching up on stored history after a restart."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from autoscaler.forecast import INDICATORS
from autoscaler.loop import STATE_EVERY_TICKS, ScalingKnobs, ScalingLoop, crd_policies
from autoscaler.policies import EbbtideForecast, NoScaling, ReactiveTargetTracking, observed_rates
from autoscaler.types import SLO, ScalingBounds, ScalingDecision, ServiceObservation

from .builders import BOUNDS, PROFILE, SLO_DEFAULT, TICK, obs


def knobs(policy: str = "forecast", **tuning: float) -> ScalingKnobs:
    return ScalingKnobs(policy, tuning, BOUNDS, SLO_DEFAULT, PROFILE)


@dataclass
class Wants:
    """A policy that asks for a fixed count and records the bounds it was given."""

    replicas: int
    seen: list[ScalingBounds] = field(default_factory=list)
    observed: list[ServiceObservation] = field(default_factory=list)

    def decide(self, o: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision:
        self.seen.append(bounds)
        self.observed.append(o)
        return ScalingDecision(self.replicas, "wanted")


def rates(n: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return [6.0 + 2.0 * math.sin(i / 20) + rng.normal(0.0, 0.3) for i in range(n)]


class TestKnobs:
    def test_the_factory_builds_what_the_crd_names_with_its_tuning(self) -> None:
        build = crd_policies()
        forecast = build(knobs(risk=0.2))
        assert isinstance(forecast, EbbtideForecast) and forecast.risk == 0.2
        reactive = build(knobs("reactive", target_utilization=0.5))
        assert isinstance(reactive, ReactiveTargetTracking) and reactive.target_utilization == 0.5
        assert isinstance(build(knobs("none")), NoScaling)
        with pytest.raises(ValueError, match="engine profile"):
            build(replace(knobs(), profile=None))
        with pytest.raises(ValueError, match="unknown scaling policy"):
            build(knobs("oracle"))

    def test_same_knobs_keep_the_policy_retuning_keeps_its_state_another_policy_starts_fresh(self) -> None:
        loop = ScalingLoop(crd_policies())
        for i, r in enumerate(rates(30)):
            loop.tick(i * TICK, knobs(risk=0.1), obs(now=i * TICK, rate=r))
        first = loop.policy
        loop.tick(30 * TICK, knobs(risk=0.1), obs(now=30 * TICK))
        assert loop.policy is first
        learned = loop.to_state()
        loop.configure(knobs(risk=0.01))
        assert loop.policy is not first and loop.to_state() == learned
        loop.configure(knobs("reactive"))
        assert isinstance(loop.policy, ReactiveTargetTracking) and loop.to_state() is None
        assert not loop.learns_from_history and loop.warm([(0.0, {"request_rate": 1.0})], knobs("reactive")) == 0


class TestBounds:
    def test_the_lead_time_comes_from_the_measured_cold_start_once_there_is_one(self) -> None:
        wants = Wants(3)
        loop = ScalingLoop(lambda _: wants)
        loop.tick(0.0, knobs(), obs())
        loop.tick(30.0, knobs(), obs(now=30.0), cold_start_s=95.0)
        loop.tick(60.0, knobs(), obs(now=60.0))  # no pod measured this time: the last measurement stands
        loop.tick(90.0, knobs(), obs(now=90.0), cold_start_s=math.nan)
        assert [b.cold_start_s for b in wants.seen] == [BOUNDS.cold_start_s, 95.0, 95.0, 95.0]
        assert all(b.max_replicas == BOUNDS.max_replicas for b in wants.seen)

    def test_a_decision_outside_the_bounds_is_clamped_and_says_so(self) -> None:
        high = ScalingLoop(lambda _: Wants(500)).tick(0.0, knobs(), obs())
        assert high.decision.replicas == BOUNDS.max_replicas and "bounds 1-20" in high.decision.reason
        zero = ScalingLoop(lambda _: Wants(0)).tick(0.0, knobs(), obs())
        assert zero.decision.replicas == 1  # zero only with scale-to-zero
        kept = ScalingLoop(lambda _: Wants(7)).tick(0.0, knobs(), obs())
        assert kept.decision == ScalingDecision(7, "wanted")

    def test_policy_none_reports_replicas_it_does_not_own_unclamped(self) -> None:
        step = ScalingLoop(crd_policies()).tick(0.0, knobs("none"), obs(replicas=40))
        assert step.decision.replicas == 40


class TestObservation:
    def test_an_observation_older_than_two_intervals_is_stale_and_holds(self) -> None:
        wants = Wants(3)
        loop = ScalingLoop(lambda _: wants)
        loop.tick(100.0, knobs(), obs(now=100.0 - 2 * TICK))
        loop.tick(200.0, knobs(), obs(now=200.0 - 2 * TICK - 1.0))
        assert [o.stale for o in wants.observed] == [False, True]
        held = ScalingLoop(crd_policies()).tick(500.0, knobs(), obs(now=100.0, replicas=4))
        assert held.observation.stale and held.decision.degraded and held.decision.replicas == 4


class TestState:
    def test_state_is_due_every_few_ticks_for_a_policy_that_keeps_one(self) -> None:
        forecast, reactive = ScalingLoop(crd_policies()), ScalingLoop(crd_policies())
        due = [forecast.tick(i * TICK, knobs(), obs(now=i * TICK)).save_state for i in range(25)]
        assert [i + 1 for i, d in enumerate(due) if d] == [STATE_EVERY_TICKS, 2 * STATE_EVERY_TICKS]
        assert not any(reactive.tick(i * TICK, knobs("reactive"), obs(now=i * TICK)).save_state for i in range(25))

    def test_restored_then_warmed_from_history_it_decides_as_if_it_never_stopped(self) -> None:
        series = rates(60, seed=3)
        live = ScalingLoop(crd_policies())
        history: list[tuple[float, dict[str, float]]] = []
        saved = None
        for i, r in enumerate(series[:55]):
            o = obs(now=i * TICK, rate=r)
            history.append((o.now, observed_rates(o)))
            if live.tick(o.now, knobs(), o).save_state:
                saved = json.loads(json.dumps(live.to_state()))
        assert saved is not None  # saved at tick 50: ticks 51 to 55 exist only in the history

        restarted, unwarmed = ScalingLoop(crd_policies()), ScalingLoop(crd_policies())
        for loop in (restarted, unwarmed):
            loop.configure(knobs())
            assert loop.restore(saved)
        assert restarted.observed_until == 49 * TICK
        assert restarted.warm(history, knobs()) == 5
        assert restarted.observed_until == 54 * TICK
        nxt = obs(now=55 * TICK, rate=series[55])
        expected = live.tick(nxt.now, knobs(), nxt).decision.forecast_quantiles
        assert restarted.tick(nxt.now, knobs(), nxt).decision.forecast_quantiles == pytest.approx(expected)
        assert unwarmed.tick(nxt.now, knobs(), nxt).decision.forecast_quantiles != pytest.approx(expected)

        cold = ScalingLoop(crd_policies())
        cold.configure(knobs())
        assert cold.warm([(t, {k: v[k] for k in INDICATORS[:1]}) for t, v in history], knobs()) == 0
        assert cold.warm(history, knobs()) == 55  # no state at all: the whole history warms it
