"""Micro-benchmark: time per service per tick of the Ebbtide forecaster and policy, for many services.

Run: .venv/bin/python -m bench.autoscaler_forecast_speed [--services 1000 --ticks 20]
Each service starts from a forecaster warmed on two days of diurnal traffic (full seasonal profiles and
error windows, so the state is as large as in production), then gets fresh noisy observations.
The budget is 5 ms per service per tick on one core.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import numpy as np

from autoscaler.capacity import EngineProfile
from autoscaler.cluster import ClusterDemand
from autoscaler.forecast import GENERATION_TOKEN_RATE, PROMPT_TOKEN_RATE, REQUEST_RATE, EbbtideForecaster
from autoscaler.policies import EbbtideForecast
from autoscaler.types import SLO, ScalingBounds, ServiceObservation

DAY = 86400.0
BUDGET_MS = 5.0


def diurnal(t: float, level: float) -> float:
    """Requests/s with a daily cycle."""
    return level * math.exp(0.8 * math.sin(2 * math.pi * t / DAY))


def rates(r: float) -> dict[str, float]:
    return {REQUEST_RATE: r, PROMPT_TOKEN_RATE: r * 500.0, GENERATION_TOKEN_RATE: r * 150.0}


def warm_state(days: float, step: float) -> tuple[dict[str, object], dict[str, object]]:
    """A forecaster's and a policy's state after `days` of traffic at `step` seconds."""
    rng = np.random.default_rng(0)
    forecaster = EbbtideForecaster()
    policy = EbbtideForecast(EngineProfile(request_rate=2.0, prompt_token_rate=2000.0, generation_token_rate=600.0))
    bounds, slo = ScalingBounds(max_replicas=100), SLO()
    replicas = 5
    for i in range(int(days * DAY / step)):
        t = i * step
        r = diurnal(t, 10.0) * math.exp(rng.normal(0.0, 0.1))
        forecaster.observe(t, rates(r))
        o = ServiceObservation("warm", t, replicas, replicas, r, r * 500, r * 150, 0.0, r, 0.5, 0.2, 0.5, 0.02, 0.04)
        replicas = policy.decide(o, bounds, slo).replicas
    return forecaster.to_state(), policy.to_state()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--step", type=float, default=30.0, help="decision interval, seconds")
    parser.add_argument("--warm-days", type=float, default=2.0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    f_state, p_state = warm_state(args.warm_days, args.step)
    warm_s = time.perf_counter() - t0
    profile = EngineProfile(request_rate=2.0, prompt_token_rate=2000.0, generation_token_rate=600.0)
    forecasters = [EbbtideForecaster.from_state(f_state) for _ in range(args.services)]
    policies = []
    for _ in range(args.services):
        p = EbbtideForecast(profile)
        p.restore(p_state)
        policies.append(p)
    bounds, slo = ScalingBounds(max_replicas=100), SLO()
    lead = bounds.cold_start_s + bounds.decision_interval_s
    rng = np.random.default_rng(1)
    start = args.warm_days * DAY
    levels = rng.uniform(0.8, 1.2, args.services) * 10.0

    cluster = ClusterDemand(args.step, forecaster=EbbtideForecaster.from_state(f_state))
    per_tick_forecaster: list[float] = []
    per_tick_policy: list[float] = []
    per_tick_cluster: list[float] = []
    for k in range(args.ticks):
        t = start + k * args.step
        observed = [diurnal(t, lv) * math.exp(rng.normal(0.0, 0.1)) for lv in levels]
        begin = time.perf_counter()
        for f, r in zip(forecasters, observed, strict=True):
            f.observe(t, rates(r))
            f.forecast(lead)
        per_tick_forecaster.append((time.perf_counter() - begin) / args.services)
        obs = [
            ServiceObservation(f"s{i}", t, 5, 5, r, r * 500, r * 150, 0.0, r, 0.5, 0.2, 0.5, 0.02, 0.04)
            for i, r in enumerate(observed)
        ]
        begin = time.perf_counter()
        for p, o in zip(policies, obs, strict=True):
            p.decide(o, bounds, slo)
        per_tick_policy.append((time.perf_counter() - begin) / args.services)
        begin = time.perf_counter()
        for i, o in enumerate(obs):
            cluster.observe(f"s{i}", o, lead)
        cluster.tick(t)
        per_tick_cluster.append((time.perf_counter() - begin) / args.services)

    def row(name: str, xs: list[float]) -> str:
        ms = sorted(x * 1e3 for x in xs)
        worst = ms[-1]
        verdict = "within" if worst < BUDGET_MS else "OVER"
        return (
            f"| {name} | {statistics.mean(ms):.3f} | {statistics.median(ms):.3f} | {worst:.3f} | "
            f"{verdict} {BUDGET_MS:g} ms |"
        )

    print(f"# Ebbtide forecaster speed: {args.services} services x {args.ticks} ticks")
    print(f"python {platform.python_version()} on {platform.machine()}, numpy {np.__version__}, one core")
    print(f"warm-up: {args.warm_days:g} days at {args.step:g} s ticks in {warm_s:.1f} s (one service, then cloned)")
    print()
    print("| per service per tick | mean ms | median ms | worst tick ms | budget |")
    print("|---|---|---|---|---|")
    print(row("forecaster: observe + forecast(lead time)", per_tick_forecaster))
    print(row("policy: EbbtideForecast.decide (observe, 4 horizons, capacity, choice)", per_tick_policy))
    print(row("whole-cluster forecast: sum every service + one forecast, shared out", per_tick_cluster))
    print()
    whole_ms = statistics.mean(per_tick_cluster) * 1e3 * args.services
    print(f"whole-cluster forecast per tick, all {args.services} services: {whole_ms:.1f} ms")


if __name__ == "__main__":
    main()
