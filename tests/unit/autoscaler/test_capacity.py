"""Capacity learner: seeded from the profile, learns from latency at load, detects drift and unattainable SLOs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from autoscaler.capacity import CapacityLearner, EngineProfile
from autoscaler.types import SLO

from .builders import PROFILE, obs

SLO_ = SLO(ttft_s=2.0, itl_s=0.1, attainment=0.99)
SLOW: dict[str, Any] = {"ttft_p95_s": 3.0, "itl_p95_s": 0.05}  # misses the TTFT objective
FAST: dict[str, Any] = {"ttft_p95_s": 0.5, "itl_p95_s": 0.04}


def test_starts_from_the_profile() -> None:
    est = CapacityLearner(PROFILE).estimate(SLO_)
    assert (est.request_rate, est.prompt_token_rate, est.generation_token_rate) == (2.0, 2000.0, 600.0)
    assert est.scale == 1.0 and est.learned_from == 0 and est.slo_attainable is None


def test_binding_dimension_decides_replicas() -> None:
    est = CapacityLearner(PROFILE).estimate(SLO_)
    assert est.replicas_for(4.0, 2000.0, 600.0) == 2.0  # requests bind
    assert est.replicas_for(4.0, 8000.0, 600.0) == 4.0  # long prompts bind
    assert est.effective_request_rate(4000.0, 0.0) == pytest.approx(0.5)


def test_misses_below_capacity_lower_it_and_flag_drift() -> None:
    learner = CapacityLearner(PROFILE)
    # 2 replicas at 1.4 req/s each = 70% of the profiled capacity, yet the SLO is missed.
    learner.observe(obs(now=0.0, rate=2.8, replicas=2, **SLOW), SLO_)
    assert learner.estimate(SLO_).scale == 1.0  # one slow tick is noise, not evidence
    for i in range(1, 10):
        learner.observe(obs(now=30.0 * i, rate=2.8, replicas=2, **SLOW), SLO_)
    est = learner.estimate(SLO_)
    assert est.request_rate == pytest.approx(0.95 * 1.4, rel=0.05)
    assert est.learned_from > 0
    assert est.drift
    for i in range(10, 40):  # the new capacity holds: the drift alarm clears
        learner.observe(obs(now=30.0 * i, rate=2.6, replicas=2, **FAST), SLO_)
    assert not learner.estimate(SLO_).drift


def test_occasional_tail_misses_near_capacity_do_not_move_it() -> None:
    learner = CapacityLearner(PROFILE)
    # At the profiled load a window's p95 often crosses the SLO while 99% of requests meet it.
    for i in range(200):
        load = 1.8 if i % 2 else 1.5  # 90% / 75% of capacity per replica
        latency = SLOW if i % 5 == 0 else FAST
        learner.observe(obs(now=30.0 * i, rate=2 * load, replicas=2, **latency), SLO_)
    assert learner.estimate(SLO_).scale == 1.0


def test_misses_while_a_backlog_drains_teach_nothing() -> None:
    learner = CapacityLearner(PROFILE)
    learner.observe(obs(now=0.0, rate=5.0, replicas=2, queue_length=400, **SLOW), SLO_)  # overloaded: a queue builds
    for i in range(1, 6):  # replicas arrived; the queued requests still come out late as the queue drains
        learner.observe(obs(now=30.0 * i, rate=5.0, replicas=5, queue_length=400 - 80 * i, **SLOW), SLO_)
    est = learner.estimate(SLO_)
    assert est.scale == 1.0
    assert est.best_ttft_s != SLOW["ttft_p95_s"]  # nor is a backlog's latency the engine's best


def test_a_queue_growing_below_the_estimate_is_evidence() -> None:
    learner = CapacityLearner(PROFILE)
    for i in range(10):
        learner.observe(obs(now=30.0 * i, rate=2.8, replicas=2, queue_length=50.0 * i, **SLOW), SLO_)
    assert learner.estimate(SLO_).scale < 0.8


def test_meeting_the_slo_above_capacity_raises_it() -> None:
    learner = CapacityLearner(PROFILE)
    for i in range(60):
        learner.observe(obs(now=30.0 * i, rate=6.0, replicas=2, **FAST), SLO_)  # 3 req/s per replica, fine
    assert learner.estimate(SLO_).request_rate == pytest.approx(3.0, rel=0.05)


def test_misses_at_light_load_are_not_about_capacity_and_mean_the_slo_is_unattainable() -> None:
    learner = CapacityLearner(PROFILE)
    for i in range(10):
        learner.observe(obs(now=30.0 * i, rate=0.2, replicas=2, ttft_p95_s=2.5, itl_p95_s=0.05), SLO_)
    est = learner.estimate(SLO_)
    assert est.scale == 1.0
    assert est.slo_attainable is False
    assert est.best_ttft_s == 2.5


def test_attainable_when_light_load_meets_the_slo() -> None:
    learner = CapacityLearner(PROFILE)
    for i in range(10):
        learner.observe(obs(now=30.0 * i, rate=1.0, replicas=2, **FAST), SLO_)
    assert learner.estimate(SLO_).slo_attainable is True


def test_capacity_floor_bounds_the_damage_of_an_unattainable_slo() -> None:
    learner = CapacityLearner(PROFILE)
    # Latency misses the SLO at every load the policy tries: capacity must not collapse to zero.
    for i in range(100):
        per_replica = 0.7 * learner.estimate(SLO_).request_rate
        learner.observe(obs(now=30.0 * i, rate=per_replica * 4, replicas=4, ttft_p95_s=5.0), SLO_)
    est = learner.estimate(SLO_)
    assert est.scale == pytest.approx(0.25)
    assert est.slo_attainable is False


def test_profile_latency_is_evidence_until_observations_arrive() -> None:
    slow_engine = EngineProfile(request_rate=1.0, ttft_s=0.5, itl_s=0.2)
    assert CapacityLearner(slow_engine).estimate(SLO_).slo_attainable is False


def test_stale_or_empty_ticks_teach_nothing() -> None:
    learner = CapacityLearner(PROFILE)
    learner.observe(obs(rate=2.8, stale=True, **SLOW), SLO_)
    learner.observe(obs(rate=2.8, ready_replicas=0, **SLOW), SLO_)
    learner.observe(obs(rate=2.8, ttft_p95_s=None, itl_p95_s=None), SLO_)
    assert learner.estimate(SLO_).scale == 1.0


def test_rejects_a_meaningless_profile() -> None:
    with pytest.raises(ValueError, match="request_rate"):
        EngineProfile(request_rate=0.0)


def test_state_round_trips() -> None:
    learner = CapacityLearner(PROFILE)
    for i in range(12):
        learner.observe(obs(now=30.0 * i, rate=2.8, replicas=2, **SLOW), SLO_)
    copy = CapacityLearner.from_state(json.loads(json.dumps(learner.to_state())))
    assert copy.estimate(SLO_) == learner.estimate(SLO_)
