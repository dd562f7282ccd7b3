"""The discrete-event cluster simulator: conservation, cold starts, drains, determinism, seams, and the
fast replica model validated against the engine's BatchScheduler."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from autoscaler.policies import ReactiveTargetTracking
from autoscaler.profile import engine_profile
from autoscaler.types import SLO, ScalingBounds, ScalingDecision, ServiceObservation
from catalogue.gpus import lookup_gpu
from catalogue.models import lookup_model
from simulator.cluster import (
    CachedStepCost,
    ClusterConfig,
    ClusterSimulator,
    ReplicaRequest,
    ReplicaView,
    RequestLog,
    SimResult,
    SimTick,
)
from simulator.traces import LengthSampler, ServeGenTrace, Trace

INTERVAL = 30.0
COLD = 120.0


@dataclass
class Scripted:
    """A policy that returns replicas from a schedule of (from time, count) and records what it saw."""

    schedule: Sequence[tuple[float, int]]
    seen: list[ServiceObservation] = field(default_factory=list)

    def decide(self, obs: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision:
        self.seen.append(obs)
        n = next(count for start, count in reversed(self.schedule) if obs.now >= start)
        return ScalingDecision(n, "scripted")


def fixed(n: int) -> Scripted:
    return Scripted([(0.0, n)])


def poisson_trace(rate: float, duration: float, seed: int = 0, prompt: int = 1000, output: int = 200) -> Trace:
    """Poisson arrivals with lengths drawn around the given means (geometric-ish spread, at least 1)."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate * duration)
    arrival = np.sort(rng.uniform(0, duration, n))
    p = np.maximum(1, rng.exponential(prompt, n).astype(np.int64))
    o = np.maximum(1, rng.exponential(output, n).astype(np.int64))
    return Trace("poisson", arrival, p, o, duration)


def config(**overrides: object) -> ClusterConfig:
    base: dict[str, object] = {
        "model": "llama-3.1-8b",
        "gpu": "H100",
        "tensor_parallel": 1,
        "cold_start_s": COLD,
        "initial_replicas": 1,
        "bounds": ScalingBounds(min_replicas=1, max_replicas=8, cold_start_s=COLD, decision_interval_s=INTERVAL),
    }
    base.update(overrides)
    return ClusterConfig(**base)  # type: ignore[arg-type]


def run(cfg: ClusterConfig, policy: Scripted, trace: Trace, **kwargs: object) -> SimResult:
    return ClusterSimulator(cfg, policy, **kwargs).run(trace, trace.duration_s)  # type: ignore[arg-type]


class TestConservation:
    def test_every_request_ends_exactly_once_in_order(self) -> None:
        trace = poisson_trace(20.0, 300.0)
        res = run(config(initial_replicas=2), fixed(2), trace)
        r = res.requests
        assert r is not None
        assert len(r["arrival"]) == len(trace)
        assert np.all(r["status"] == RequestLog.OK)
        assert np.all(r["first_token"] >= r["arrival"]) and np.all(r["finish"] >= r["first_token"])
        assert set(np.unique(r["replica"])) == {0, 1}
        assert res.outcomes.requests == len(trace)

    def test_gpu_seconds_cover_replicas_from_binding_to_the_end(self) -> None:
        trace = poisson_trace(5.0, 600.0)
        res = run(config(initial_replicas=2), fixed(2), trace)
        assert res.gpu_seconds == pytest.approx(2 * 600.0)
        assert res.energy_j > 0


class TestColdStart:
    def test_new_replicas_serve_only_after_the_cold_start(self) -> None:
        trace = poisson_trace(30.0, 600.0, seed=1)
        res = run(config(), Scripted([(0.0, 1), (60.0, 3)]), trace)
        added = [rep for rep in res.replicas if rep.replica_id > 0]
        assert len(added) == 2
        for rep in added:
            assert rep.bound_at == 60.0 and rep.ready_at == 60.0 + COLD
        r = res.requests
        assert r is not None
        late = r["replica"] > 0
        assert late.any() and np.all(r["arrival"][late] >= 60.0 + COLD)
        tl = res.timeline
        before = tl["t"] < 60.0 + COLD
        assert np.all(tl["ready"][before] == 1) and tl["ready"][-1] == 3
        assert np.all(tl["starting"][(tl["t"] >= 60.0) & before] == 2)
        # GPUs are held from binding, cold start included
        assert res.gpu_seconds == pytest.approx(600.0 + 2 * (600.0 - 60.0))

    def test_requests_wait_at_the_gateway_without_replicas_and_time_out(self) -> None:
        bounds = ScalingBounds(min_replicas=0, scale_to_zero=True, cold_start_s=COLD, decision_interval_s=INTERVAL)
        cfg = config(initial_replicas=0, bounds=bounds, gateway_timeout_s=100.0)
        trace = poisson_trace(2.0, 400.0, seed=2)
        res = run(cfg, Scripted([(0.0, 1)]), trace)
        r = res.requests
        assert r is not None
        ready = 30.0 + COLD
        waited = r["arrival"] < ready
        timed_out = r["arrival"] < ready - 100.0
        assert np.all(r["status"][timed_out] == RequestLog.FAILED)
        assert np.all(r["status"][waited & ~timed_out] == RequestLog.OK)
        assert np.all(r["first_token"][waited & ~timed_out] > ready)
        assert res.summary().failed == int(timed_out.sum())


class TestDrain:
    def test_scale_in_drains_in_flight_work_then_removes(self) -> None:
        trace = poisson_trace(40.0, 600.0, seed=3, output=400)
        res = run(config(initial_replicas=3), Scripted([(0.0, 3), (300.0, 1)]), trace)
        r = res.requests
        assert r is not None
        assert np.all(r["status"] == RequestLog.OK)  # nothing lost while draining
        kept = [rep for rep in res.replicas if rep.removed_at is None]
        drained = [rep for rep in res.replicas if rep.removed_at is not None]
        assert len(kept) == 1 and len(drained) == 2
        for rep in drained:
            served = r["replica"] == rep.replica_id
            assert np.all(r["arrival"][served] <= 300.0)  # no new work after the drain began
            assert rep.removed_at == pytest.approx(r["finish"][served].max())  # removed when the last finished
            assert rep.removed_at is not None and rep.removed_at > 300.0
        # GPU-seconds run until each drained replica is removed
        expected = 600.0 + sum(rep.removed_at for rep in drained if rep.removed_at is not None)
        assert res.gpu_seconds == pytest.approx(expected)
        assert res.timeline["draining"][res.timeline["t"] == 300.0][0] == 2

    def test_scale_in_cancels_starting_replicas_first(self) -> None:
        trace = poisson_trace(5.0, 400.0, seed=4)
        res = run(config(initial_replicas=1), Scripted([(0.0, 1), (30.0, 2), (60.0, 1)]), trace)
        assert res.replicas[1].ready_at is None and res.replicas[1].removed_at == 60.0
        assert res.replicas[0].removed_at is None
        assert res.gpu_seconds == pytest.approx(400.0 + 30.0)


class TestDeterminism:
    def test_same_inputs_same_results(self) -> None:
        table = ServeGenTrace(
            "t", 600.0, ("c0", "c1"), np.array([[3.0, 8.0], [1.0, 0.5]]),
            np.array([[1, 2], [2, 1]], dtype=np.int8), np.array([[0.5, 0.3], [0.8, 2.0]]),
        )  # fmt: skip
        lengths = LengthSampler(np.array([300, 1500, 800]), np.array([50, 300, 120]))

        def once() -> SimResult:
            trace = table.synthesize(0, 1200, seed=9, lengths=lengths)
            return run(config(), Scripted([(0.0, 1), (90.0, 2), (600.0, 1)]), trace)

        a, b = once(), once()
        assert a.requests is not None and b.requests is not None
        for key in a.requests:
            np.testing.assert_array_equal(a.requests[key], b.requests[key])
        for key in a.timeline:
            np.testing.assert_array_equal(a.timeline[key], b.timeline[key])
        assert a.gpu_seconds == b.gpu_seconds


class TestObservations:
    def test_policy_sees_engine_state_each_tick(self) -> None:
        trace = poisson_trace(10.0, 300.0, seed=5)
        policy = fixed(2)
        res = run(config(initial_replicas=2), policy, trace)
        assert [o.now for o in policy.seen] == [30.0 * k for k in range(1, 11)]
        # As from vLLM's request_success_total: requests that completed in each interval, not arrivals; the
        # first tick has no previous scrape to take a rate against.
        r = res.requests
        assert r is not None
        done = r["finish"][r["status"] == RequestLog.OK]
        completed = [np.count_nonzero((done >= t - 30.0) & (done < t)) for t in np.arange(60.0, 301.0, 30.0)]
        assert policy.seen[0].stale and not any(o.stale for o in policy.seen[1:])
        np.testing.assert_allclose([o.request_rate for o in policy.seen[1:]], np.asarray(completed) / 30.0)
        np.testing.assert_allclose(res.timeline["observed_rps"][1:], np.asarray(completed) / 30.0)
        arrivals = np.histogram(trace.arrival_s, bins=np.arange(0, 301, 30))[0]
        np.testing.assert_allclose(res.timeline["demand_rps"], arrivals / 30.0)  # the plots' ground truth
        o = policy.seen[5]
        assert o.ready_replicas == 2 and o.replicas == 2
        assert o.ttft_p50_s is not None and 0 < o.ttft_p50_s < 1.0
        assert o.itl_p95_s is not None and 0 < o.itl_p95_s < 0.1
        assert 0 < o.kv_cache_usage < 1 and o.running > 0
        assert o.generation_token_rate > 0 and o.prompt_token_rate > 0

    def test_the_scrape_holds_only_replicas_that_are_routed_to(self) -> None:
        ticks: list[SimTick] = []
        trace = poisson_trace(40.0, 600.0, seed=3, output=400)
        schedule = Scripted([(0.0, 3), (300.0, 1), (450.0, 2)])
        run(config(initial_replicas=3), schedule, trace, on_tick=ticks.append)
        pods = {t.now: sorted(t.scrape.samples) for t in ticks}
        assert pods[300.0] == ["r0", "r1", "r2"]
        assert pods[330.0] == ["r0"]  # two drain from 300 s: no longer scraped, like unrouted pods
        assert pods[450.0 + COLD + 30.0] == ["r0", "r3"]

    def test_the_loop_plans_with_the_cold_start_measured_from_the_replicas(self) -> None:
        ticks: list[SimTick] = []
        assumed = ScalingBounds(min_replicas=1, max_replicas=8, cold_start_s=500.0, decision_interval_s=INTERVAL)
        run(config(bounds=assumed), Scripted([(0.0, 1), (60.0, 2)]), poisson_trace(2.0, 400.0), on_tick=ticks.append)
        lead = {t.now: t.step.bounds.cold_start_s for t in ticks}
        # The replica ready from the start measured nothing; the one added at 60 s was ready at 60 + COLD.
        assert lead[60.0 + COLD] == 500.0 and lead[90.0 + COLD] == COLD and lead[390.0] == COLD

    def test_without_a_policy_object_the_config_names_the_policy_the_operator_would_build(self) -> None:
        cfg = config(policy="reactive", tuning={"target_utilization": 0.5})
        sim = ClusterSimulator(cfg)
        sim.run(poisson_trace(5.0, 120.0), 120.0)
        assert isinstance(sim.policy, ReactiveTargetTracking) and sim.policy.target_utilization == 0.5
        model, gpu = lookup_model("llama-3.1-8b"), lookup_gpu("H100")
        assert model is not None and gpu is not None
        assert sim.policy.profile == engine_profile(model, gpu, 1, cfg.slo)  # the catalogue's, as profile_of


@dataclass
class LateBinder:
    """A packing policy with no room until `free_at`."""

    free_at: float
    released: list[int] = field(default_factory=list)

    def bind(self, request: ReplicaRequest, now: float) -> str | None:
        return f"node-{request.replica_id}" if now >= self.free_at else None

    def release(self, replica_id: int, now: float) -> None:
        self.released.append(replica_id)


@dataclass
class CapAll:
    """A power policy that caps every replica at a fixed per-GPU limit."""

    watts: float
    seen: list[Sequence[ReplicaView]] = field(default_factory=list)

    def caps(self, now: float, replicas: Sequence[ReplicaView]) -> Mapping[int, float | None]:
        self.seen.append(replicas)
        return {r.replica_id: self.watts for r in replicas}


class TestSeams:
    def test_pending_replicas_hold_no_gpus_until_bound(self) -> None:
        trace = poisson_trace(2.0, 600.0, seed=6)
        binder = LateBinder(free_at=150.0)
        res = run(config(), Scripted([(0.0, 1), (30.0, 2), (400.0, 1)]), trace, packing=binder)
        late = res.replicas[1]
        assert late.bound_at == 150.0 and late.ready_at == 150.0 + COLD and late.node == "node-1"
        assert binder.released == [1]
        assert late.removed_at is not None
        assert res.gpu_seconds == pytest.approx(600.0 + (late.removed_at - 150.0))

    def test_power_caps_reach_the_engine_model(self) -> None:
        trace = poisson_trace(15.0, 600.0, seed=7)
        free = run(config(), fixed(1), trace)
        power = CapAll(watts=250.0)
        capped = run(config(), fixed(1), trace, power=power)
        assert power.seen and power.seen[0][0].state == "ready"
        assert capped.replicas[0].power_limit_w == 250.0
        assert capped.summary().itl_p50_s > free.summary().itl_p50_s * 1.05
        assert capped.energy_j < free.energy_j


def compare(trace: Trace, cfg: ClusterConfig, policy: Callable[[], Scripted]) -> tuple[SimResult, SimResult]:
    fast = run(cfg, policy(), trace)
    stepped = run(ClusterConfig(**{**cfg.__dict__, "engine": "stepped"}), policy(), trace)
    return fast, stepped


class TestFastReplicaAgainstBatchScheduler:
    """FastReplica is the fast path the benchmarks use; BatchScheduler is the engine's own step logic."""

    def test_latency_distributions_agree_under_load(self) -> None:
        trace = poisson_trace(34.0, 240.0, seed=8, prompt=1100, output=200)
        fast, stepped = compare(trace, config(initial_replicas=2), lambda: fixed(2))
        f, s = fast.summary(), stepped.summary()
        assert f.slo_attainment == pytest.approx(s.slo_attainment, abs=0.02)
        for q in ("ttft_p50_s", "ttft_p90_s", "itl_p50_s", "itl_p90_s", "e2e_p50_s"):
            assert getattr(f, q) == pytest.approx(getattr(s, q), rel=0.1), q
        assert fast.wall_s < stepped.wall_s

    def test_kv_pressure_and_preemption_agree(self) -> None:
        cfg = config(model="llama-3.1-8b", gpu="L4")
        trace = poisson_trace(1.0, 240.0, seed=9, prompt=2500, output=400)
        fast, stepped = compare(trace, cfg, lambda: fixed(1))
        assert fast.preemptions > 0 and stepped.preemptions > 0
        assert fast.preemptions == pytest.approx(stepped.preemptions, rel=0.25)
        f, s = fast.summary(), stepped.summary()
        for q in ("ttft_p50_s", "itl_p50_s", "e2e_p50_s"):
            assert getattr(f, q) == pytest.approx(getattr(s, q), rel=0.1), q


class TestWarmUp:
    def test_warm_up_is_simulated_but_not_measured(self) -> None:
        trace = poisson_trace(10.0, 600.0, seed=11)
        policy = Scripted([(0.0, 1), (60.0, 2)])
        res = ClusterSimulator(config(), policy).run(trace, 600.0, measure_from_s=300.0)
        measured = trace.arrival_s >= 300.0
        s = res.summary()
        assert s.requests == res.outcomes.requests == int(measured.sum())
        # Replica 1 was bound at 60 s; only the measured 300 s count for both
        assert res.gpu_seconds == pytest.approx(2 * 300.0)
        assert len(policy.seen) == 20  # decisions ran through the warm-up too
        with pytest.raises(ValueError):
            ClusterSimulator(config(), fixed(1)).run(trace, 600.0, measure_from_s=600.0)


class TestRecords:
    def test_bounded_log_summarises_like_the_full_one(self) -> None:
        trace = poisson_trace(20.0, 600.0, seed=10)
        full = run(config(initial_replicas=2), fixed(2), trace)
        ring = ClusterSimulator(config(initial_replicas=2), fixed(2), log_capacity=4000)
        chunks = [(t, trace.window(t, t + 100.0)) for t in np.arange(0.0, 600.0, 100.0)]
        bounded = ring.run(chunks, 600.0)
        assert bounded.requests is None
        a, b = full.summary(), bounded.summary()
        assert (a.requests, a.failed) == (b.requests, b.failed)
        assert a.slo_attainment == pytest.approx(b.slo_attainment, abs=1e-12)
        assert b.ttft_p50_s == pytest.approx(a.ttft_p50_s, rel=0.03)
        assert b.itl_p90_s == pytest.approx(a.itl_p90_s, rel=0.03)
        hourly = bounded.outcomes.attainment_series()
        assert len(hourly) == 1 and hourly[0] == pytest.approx(a.slo_attainment)

    def test_cached_cost_is_exact_for_the_roofline_model(self) -> None:
        perf = config().perf()
        cached = CachedStepCost(perf)
        assert cached.affine
        for p, b, kv in ((0, 1, 100), (0, 64, 90_000), (700, 20, 40_000), (8000, 0, 0)):
            assert cached.step_seconds(p, b, kv) == pytest.approx(perf.step_seconds(p, b, kv), rel=1e-9)
        pairs = 300 * 150 + 200 * 100
        exact = perf.step_profile(500, 4, 5000, prefill_attention_pairs=pairs).duration_s
        assert cached.step_seconds(500, 4, 5000, pairs) == pytest.approx(exact, rel=1e-9)
