"""How fast the cluster simulator runs: 24 hours of ServeGen m-mid for one service, timed.

Run: `python -m bench.autoscaler.speed [--hours 24] [--start-day 0] [--policy reactive] [--engine fast]`.
The service is the benchmark's (m-mid x 0.02, Llama-3.1-70B on 4 x H100 per replica, 204 s cold start) under
HPA-like scaling (the operator's scaling loop and policy), so replicas come and go as they would in the
benchmark. Arrival synthesis is timed separately from the simulation; the machine's load average is printed
because other jobs skew wall time.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import replace

from autoscaler.capacity import EngineProfile
from bench.autoscaler.scenario import DAY_S, Scenario, cluster_config, lengths
from simulator.cluster import ClusterSimulator

# The conversation-length calibration the benchmark measures (bench/results/autoscaler.md), fixed here so
# that the timing does not include a calibration run.
CAPACITY_RPS = 8.5


def main(argv: Sequence[str] | None = None) -> int:
    """Time one simulation and print the figures."""
    p = argparse.ArgumentParser(prog="python -m bench.autoscaler.speed", description=__doc__)
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--start-day", type=float, default=0.0)
    p.add_argument("--scale", type=float, default=0.02, help="m-mid rate scale (one service)")
    p.add_argument("--policy", choices=("reactive", "forecast"), default="reactive")
    p.add_argument("--engine", choices=("fast", "stepped"), default="fast")
    args = p.parse_args(argv)
    sampler = lengths("conv")
    profile = EngineProfile(
        request_rate=CAPACITY_RPS,
        prompt_token_rate=CAPACITY_RPS * sampler.mean_prompt,
        generation_token_rate=CAPACITY_RPS * sampler.mean_output,
    )
    start = args.start_day * DAY_S
    scenario = Scenario("servegen-m-mid", start, start + args.hours * 3600, args.scale)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    chunks = list(scenario.chunks())
    synth_s = time.perf_counter() - t0
    requests = sum(len(tr) for _, tr in chunks)
    tuning = {"target_utilization": 0.7} if args.policy == "reactive" else {}
    cfg = replace(cluster_config(5), engine=args.engine, policy=args.policy, tuning=tuning, profile=profile)
    sim = ClusterSimulator(cfg, log_capacity=4_000_000)
    t1 = time.perf_counter()
    res = sim.run(iter(chunks), scenario.duration_s)
    sim_s = time.perf_counter() - t1
    s = res.summary()
    print(f"trace      {scenario.label}: {requests:,} requests ({requests / scenario.duration_s:.1f} req/s mean)")
    print(f"synthesis  {synth_s:.1f} s")
    print(f"simulation {sim_s:.1f} s wall = {sim_s / requests * 1e6:.1f} us per request ({args.engine} engine)")
    print(f"total      {synth_s + sim_s:.1f} s for {args.hours:g} h simulated; load average before start {load0:.2f}")
    print(
        f"outcome    {args.policy}: {res.gpu_hours:,.0f} GPU-hours, attainment {s.slo_attainment:.4f}, "
        f"replicas mean {res.timeline['ready'].mean():.1f} max {res.timeline['ready'].max():.0f}, "
        f"{res.decisions} decisions"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
