"""One benchmark run (a policy at one knob value on one scenario) and running many in worker processes."""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from autoscaler.loop import PolicyFactory, ScalingKnobs, crd_policies
from autoscaler.policies import POLICIES
from autoscaler.types import ScalingPolicy
from bench.autoscaler.baselines import KPALike, Oracle, PointForecast, StaticPeak
from bench.autoscaler.scenario import Calibration, LoadSeries, Scenario, cluster_config, load_series
from simulator.cluster import ClusterSimulator

# Benchmark order: the over-provisioned baseline, two reactive ones, two forecasters, two perfect-foresight
# references: the future's 5-minute means (what a forecaster could at best know) and its every 10 s burst
POLICY_ORDER = ("static-peak", "reactive", "kpa", "point-forecast", "forecast", "oracle-level", "oracle")
POLICY_LABELS = {
    "static-peak": "Static peak",
    "reactive": "Reactive (HPA-like)",
    "kpa": "KPA-like (Knative)",
    "point-forecast": "Point forecast",
    "forecast": "Ebbtide",
    "oracle-level": "Level oracle (5-min means)",
    "oracle": "Oracle",
}
KNOBS = {
    "static-peak": "replicas",
    "reactive": "target_utilization",
    "kpa": "target_utilization",
    "point-forecast": "headroom",
    "forecast": "risk",
    "oracle-level": "headroom",
    "oracle": "headroom",
}
# Request-log ring size: many hours of requests at benchmark rates, so memory stays flat over 14 days
LOG_CAPACITY = 4_000_000


@dataclass(frozen=True)
class RunSpec:
    """What to run."""

    scenario: Scenario
    policy: str
    value: float  # the policy's knob (see KNOBS)
    calibration: Calibration
    initial_replicas: int
    phase: str = "sweep"  # "sweep" or "eval"
    keep_timeline: bool = False


@dataclass(frozen=True)
class RunResult:
    """What one run measured."""

    spec: RunSpec
    gpu_hours: float
    attainment: float
    requests: int
    failed: int
    ttft_p99_s: float
    itl_p99_s: float
    mean_ready: float
    max_ready: int
    scale_changes: int  # decisions that changed the desired replica count
    energy_kwh: float
    wall_s: float
    hourly_attainment: np.ndarray
    timeline: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def requests_per_wall_s(self) -> float:
        """Simulation speed."""
        return self.requests / self.wall_s if self.wall_s > 0 else math.nan


LEVEL_BUCKETS = 30  # the level oracle sees 30 x 10 s = 5-minute means of the future


@lru_cache(maxsize=4)
def _load(scenario: Scenario) -> LoadSeries:
    return load_series(scenario)


@lru_cache(maxsize=4)
def _level(scenario: Scenario) -> LoadSeries:
    return _load(scenario).coarsen(LEVEL_BUCKETS)


def knob_values(spec: RunSpec) -> dict[str, float]:
    """The run's knob as the policy's tuning (what spec.scaling would set for the production policies)."""
    return {KNOBS[spec.policy]: spec.value}


def policy_factory(spec: RunSpec) -> PolicyFactory:
    """The policies of a run: the operator's factory for the production ones (the benchmark measures what the
    operator runs), the baselines from bench/autoscaler/baselines.py."""
    production = crd_policies()
    profile = spec.calibration.profile
    v = spec.value

    def build(knobs: ScalingKnobs) -> ScalingPolicy:
        if knobs.policy in POLICIES:
            return production(knobs)
        if knobs.policy == "static-peak":
            return StaticPeak(int(v))
        if knobs.policy == "kpa":
            return KPALike(concurrency_per_replica=spec.calibration.kpa_concurrency, target_utilization=v)
        if knobs.policy == "point-forecast":
            return PointForecast(profile, headroom=v)
        if knobs.policy == "oracle":
            return Oracle(_load(spec.scenario).at, profile, headroom=v)
        if knobs.policy == "oracle-level":
            return Oracle(_level(spec.scenario).at, profile, headroom=v)
        raise ValueError(f"unknown policy {knobs.policy!r}")

    return build


def run_one(spec: RunSpec) -> RunResult:
    """Simulate one run."""
    wall0 = time.perf_counter()
    initial = int(spec.value) if spec.policy == "static-peak" else spec.initial_replicas
    config = replace(
        cluster_config(max(1, initial)),
        policy=spec.policy,
        tuning=knob_values(spec) if spec.policy in POLICIES else {},
        profile=spec.calibration.profile,
    )
    sim = ClusterSimulator(config, factory=policy_factory(spec), log_capacity=LOG_CAPACITY)
    scenario = spec.scenario
    res = sim.run(scenario.chunks(), scenario.sim_end_s, measure_from_s=scenario.warmup_s)
    summary = res.summary()
    measured = res.timeline["t"] > scenario.warmup_s
    tl = {k: v[measured] for k, v in res.timeline.items()}
    desired = tl["desired"]
    timeline = (
        {k: tl[k].astype(np.float32) for k in ("t", "desired", "ready", "starting", "demand_rps", "observed_rps")}
        if spec.keep_timeline
        else {}
    )
    return RunResult(
        spec=spec,
        gpu_hours=res.gpu_hours,
        attainment=summary.slo_attainment,
        requests=summary.requests,
        failed=summary.failed,
        ttft_p99_s=summary.ttft_p99_s,
        itl_p99_s=summary.itl_p99_s,
        mean_ready=float(tl["ready"].mean()) if len(tl["ready"]) else math.nan,
        max_ready=int(tl["ready"].max()) if len(tl["ready"]) else 0,
        scale_changes=int(np.count_nonzero(np.diff(desired))) if len(desired) > 1 else 0,
        energy_kwh=res.energy_j / 3.6e6,
        wall_s=time.perf_counter() - wall0,
        hourly_attainment=res.outcomes.attainment_series(),
        timeline=timeline,
    )


def run_all(
    specs: Iterable[RunSpec], jobs: int, progress: Callable[[RunResult], None] | None = None
) -> list[RunResult]:
    """Run specs on `jobs` worker processes (1: in this process), longest first; results in input order."""
    specs = list(specs)
    order = sorted(range(len(specs)), key=lambda i: -specs[i].scenario.sim_end_s)
    results: dict[int, RunResult] = {}

    def consume(it: Iterator[tuple[int, RunResult]]) -> None:
        for i, r in it:
            results[i] = r
            if progress is not None:
                progress(r)

    if jobs <= 1:
        consume((i, run_one(specs[i])) for i in order)
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs, maxtasksperchild=4) as pool:
            consume(pool.imap_unordered(_indexed, [(i, specs[i]) for i in order]))
    return [results[i] for i in range(len(specs))]


def _indexed(item: tuple[int, RunSpec]) -> tuple[int, RunResult]:
    return item[0], run_one(item[1])
