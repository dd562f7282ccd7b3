"""Autoscaler benchmark: static peak, HPA-like, KPA-like, point forecast, Ebbtide and oracle side by side.

Run: `python -m bench.autoscaler` (full) or `python -m bench.autoscaler --quick`. Writes
bench/results/autoscaler{,-quick}.md, .json and two PNGs (GPU-hours vs SLO attainment; replicas vs demand).

Protocol. Each policy's knob is swept on a window of each trace; its cost at the 99% attainment target is
interpolated between the sweep points around the target. ServeGen m-mid is swept on day 5 (hours 96-120: a
deep trough, then the jump to the second week's load); in full mode each policy then replays all 14 days at
its cheapest knob that met the target in the sweep. Azure hours are swept whole.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.autoscaler.report import (
    AtTarget,
    at_target,
    goal_lines,
    hourly_misses,
    plot_day,
    plot_pareto,
    runs_table,
    target_table,
)
from bench.autoscaler.runner import KNOBS, POLICY_ORDER, RunResult, RunSpec, run_all
from bench.autoscaler.scenario import (
    BENCH_SLO,
    DAY_S,
    GPU,
    IMAGE_PULL_S,
    LOAD_GBPS,
    MAX_REPLICAS,
    MODEL,
    ORACLE_RESOLUTION_S,
    STABILIZATION_S,
    TENSOR_PARALLEL,
    Calibration,
    Scenario,
    bounds,
    calibrate,
    cold_start_s,
    load_series,
)

RESULTS = Path(__file__).resolve().parent.parent / "results"
MMID_SCALE = 0.02  # m-mid's aggregate (109 clients, ~1,800 req/s mean) x 0.02 = one service, ~36 req/s mean
AZURE_COPIES = 8
MMID_WARMUP_S = 6 * 3600.0  # forecasters see the six hours before a sweep window

FULL_GRIDS: dict[str, list[float]] = {
    "reactive": [0.5, 0.6, 0.7, 0.8, 0.9],
    "kpa": [0.5, 0.6, 0.7, 0.8, 0.9],
    "point-forecast": [0.0, 0.1, 0.2, 0.35, 0.5],
    "forecast": [0.7, 0.5, 0.3, 0.1, 0.03, 0.01, 0.003],
    "oracle-level": [0.2, 0.4, 0.6, 0.8, 1.0],
    "oracle": [-0.3, -0.2, -0.1, 0.0, 0.1],  # negative headroom lets queueing absorb sub-lead-time bursts
}
QUICK_GRIDS: dict[str, list[float]] = {
    "reactive": [0.5, 0.7, 0.9],
    "kpa": [0.5, 0.7, 0.9],
    "point-forecast": [0.0, 0.2, 0.5],
    "forecast": [0.5, 0.1, 0.01],
    "oracle-level": [0.3, 0.8],
    "oracle": [-0.2, 0.0],
}


@dataclass(frozen=True)
class Study:
    """One trace: where knobs are swept and (optionally) the longer span the chosen knobs replay."""

    title: str
    sweep: Scenario
    evaluate: Scenario | None = None


def studies(quick: bool) -> list[Study]:
    """The scenarios of a full or quick run."""
    mmid_day = Scenario("servegen-m-mid", 4 * DAY_S, 5 * DAY_S, MMID_SCALE, warmup_s=MMID_WARMUP_S)
    conv = Scenario("azure-conv", 0.0, 3600.0, AZURE_COPIES, warmup_s=3600.0)
    if quick:
        return [Study("ServeGen m-mid, one day", mmid_day), Study("Azure conversation, one hour", conv)]
    return [
        Study("ServeGen m-mid", mmid_day, Scenario("servegen-m-mid", 0.0, 14 * DAY_S, MMID_SCALE)),
        Study("Azure conversation, one hour", conv),
        Study("Azure code, one hour", Scenario("azure-code", 0.0, 3600.0, AZURE_COPIES, warmup_s=3600.0)),
    ]


def static_grid(need: np.ndarray, quick: bool) -> list[float]:
    """Static replica counts around the demand's upper quantiles (per-minute need)."""
    qs = (0.9, 0.999, 1.0) if quick else (0.9, 0.99, 0.999, 1.0)
    values = sorted({max(1, math.ceil(float(np.quantile(need, q)))) for q in qs})
    return [float(v) for v in values]


def initial_replicas(need_10s: np.ndarray) -> int:
    """What the first lead time needs: every policy starts there (a warm service, not a cold start)."""
    lead_s = bounds().cold_start_s + bounds().decision_interval_s
    k = max(1, int(lead_s // ORACLE_RESOLUTION_S))
    return max(1, math.ceil(float(need_10s[:k].max())))


def sweep_specs(study: Study, cal: Calibration, quick: bool) -> tuple[list[RunSpec], int]:
    """All sweep runs of a study, and the initial replica count they share."""
    series = load_series(study.sweep)
    initial = initial_replicas(series.need(cal.profile))
    grids = dict(QUICK_GRIDS if quick else FULL_GRIDS)
    per_minute = series.coarsen(6).need(cal.profile)
    grids["static-peak"] = static_grid(per_minute[int(study.sweep.warmup_s // 60) :], quick)
    specs = [
        RunSpec(study.sweep, name, v, cal, initial, "sweep", keep_timeline=True)
        for name in POLICY_ORDER
        for v in grids[name]
    ]
    return specs, initial


BRACKET_ROUNDS = 2


def extend_grid(policy: str, values: Sequence[float], more_capacity: bool) -> list[float]:
    """Two knob values beyond the sweep's end, toward more (or less) capacity, within the knob's range."""
    lo, hi = min(values), max(values)
    if policy == "static-peak":
        step = max(1.0, round(0.1 * hi))
        cand = [hi + step, hi + 2 * step] if more_capacity else [lo - step, lo - 2 * step]
        return [v for v in cand if v >= 1]
    if policy in ("reactive", "kpa"):  # lower target utilisation = more replicas
        top = 1.5 if policy == "reactive" else 1.0
        cand = [lo - 0.1, lo - 0.2] if more_capacity else [hi + 0.1, hi + 0.2]
        return [round(v, 3) for v in cand if 0.1 <= v <= top]
    if policy == "forecast":  # lower risk = more replicas
        cand = [lo / 3, lo / 10] if more_capacity else [min(hi * 2, 0.8), min(hi * 3, 0.9)]
        return sorted({round(v, 6) for v in cand if 0 < v < 1 and v not in values})
    step = 0.15  # point-forecast and oracles' headroom
    cand = [hi + step, hi + 2 * step] if more_capacity else [lo - step, lo - 2 * step]
    floor = 0.0 if policy == "point-forecast" else -0.8
    return [round(v, 3) for v in cand if v >= floor and v not in values]


def bracket_specs(results: Sequence[RunResult]) -> list[RunSpec]:
    """Extra sweep runs for every (scenario, policy) whose sweep does not straddle the attainment target."""
    target = BENCH_SLO.attainment
    extra: list[RunSpec] = []
    for scenario in dict.fromkeys(r.spec.scenario for r in results):
        for name in POLICY_ORDER:
            runs = [r for r in results if r.spec.scenario == scenario and r.spec.policy == name]
            if not runs:
                continue
            meets = [r.attainment >= target for r in runs]
            if all(meets) == any(meets):  # all meet or none does: the target is off the sweep's end
                template = runs[0].spec
                for v in extend_grid(name, [r.spec.value for r in runs], more_capacity=not any(meets)):
                    extra.append(replace(template, value=v))
    return extra


def choose(runs: Sequence[RunResult]) -> dict[str, AtTarget]:
    """Per policy, its cost at the target from its sweep."""
    return {
        name: at_target([r for r in runs if r.spec.policy == name], BENCH_SLO.attainment)
        for name in POLICY_ORDER
        if any(r.spec.policy == name for r in runs)
    }


def progress(r: RunResult) -> None:
    """One line per finished run."""
    s = r.spec
    print(
        f"  [{s.phase}] {s.scenario.trace:16s} {s.policy:15s} {KNOBS[s.policy]}={s.value:<6g} "
        f"GPU-h {r.gpu_hours:9.1f}  attain {r.attainment:.4f}  {r.requests:>10,} req in {r.wall_s:6.1f}s",
        flush=True,
    )


def result_json(r: RunResult) -> dict[str, object]:
    """A run as plain JSON."""
    s = r.spec
    return {
        "scenario": s.scenario.label,
        "phase": s.phase,
        "policy": s.policy,
        "knob": KNOBS[s.policy],
        "value": s.value,
        "gpu_hours": r.gpu_hours,
        "attainment": r.attainment,
        "requests": r.requests,
        "failed": r.failed,
        "ttft_p99_s": r.ttft_p99_s,
        "itl_p99_s": r.itl_p99_s,
        "mean_ready": r.mean_ready,
        "max_ready": r.max_ready,
        "scale_changes": r.scale_changes,
        "energy_kwh": r.energy_kwh,
        "wall_s": r.wall_s,
    }


def setup_lines(cals: dict[str, Calibration], quick: bool, jobs: int) -> list[str]:
    """The markdown section stating data, hardware, calibration, cold start and baselines."""
    b = bounds()
    lines = [
        "## Setup",
        "",
        "**Data.** ServeGen m-mid (alibaba/ServeGen, 109 clients, 14 days of 600 s windows): arrivals are "
        "synthesized per client and window from its rate and inter-arrival family/shape (Gamma or Weibull), "
        f"seeded; the aggregate is scaled by {MMID_SCALE:g} to one service (14-day mean about "
        f"{1790 * MMID_SCALE:.0f} req/s, busiest 600 s window about {3445 * MMID_SCALE:.0f} req/s). "
        "ServeGen's language traces carry no lengths here, so (prompt, output) pairs are drawn jointly from "
        "the Azure conversation trace. Azure LLM inference 2023 (conversation and code, one hour each): every "
        f"request is replayed by {AZURE_COPIES} clients within 1 s of its trace time, so the hour's bursty "
        f"minutes keep their shape at {AZURE_COPIES}x the rate. The m-mid trace has collection gaps (about a "
        "dozen hours with almost no traffic, e.g. hours 87-88, 185-187 and 235-238), replayed as they are.",
        "",
        f"**Hardware profile.** {MODEL} (dense, 70.6 B parameters) on {GPU} 80GB, tensor parallel "
        f"{TENSOR_PARALLEL} (one replica = {TENSOR_PARALLEL} GPUs), max 256 sequences and 8192 batched tokens "
        "per step, KV cache from 90% of HBM. Step times come from the roofline PerfModel "
        "(catalogue/perf.py; calibration constants and their sources in docs/simulator.md).",
        "",
        f"**Cold start.** {IMAGE_PULL_S:.0f} s image pull + 141 GB of weights at {LOAD_GBPS:g} GB/s + 20 s "
        f"engine start-up = {cold_start_s():.0f} s from binding to serving; GPUs are paid from binding. "
        "The scaling loop assumes this cold start until it has measured one (creation to ready of the replicas "
        "serving), as the operator does from its pods; here the two are the same.",
        "",
        f"**Service.** SLO: TTFT <= {BENCH_SLO.ttft_s:g} s and mean inter-token latency <= "
        f"{BENCH_SLO.itl_s * 1000:g} ms per request, target attainment {BENCH_SLO.attainment:.0%} (failed "
        f"requests count as misses). Bounds 1-{MAX_REPLICAS} replicas, a decision every "
        f"{b.decision_interval_s:g} s, scale-down stabilization {STABILIZATION_S:g} s. Routing: least "
        "outstanding requests; scale-in drains (no new requests, in-flight ones finish). Every policy starts "
        "at the replicas the first lead time needs.",
        "",
        "**Calibration.** The policies' per-replica capacity (`EngineProfile`) is measured on the same "
        "simulator like an offline vLLM benchmark: one replica, 30 minutes of Poisson arrivals with the "
        "trace's length mix, the highest rate (bisection to 0.1 req/s) that still meets the attainment target. "
        "KPA's concurrency target is the mean number of requests in flight at that rate.",
        "",
        "| lengths | capacity req/s per replica | prompt tok/s | generated tok/s | unloaded TTFT ms "
        "| unloaded ITL ms | KPA concurrency |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, c in cals.items():
        p = c.profile
        lines.append(
            f"| Azure {kind} | {p.request_rate:.2f} | {p.prompt_token_rate or 0:,.0f} "
            f"| {p.generation_token_rate or 0:,.0f} | {1000 * (p.ttft_s or 0):.0f} | {1000 * (p.itl_s or 0):.1f} "
            f"| {c.kpa_concurrency:.1f} |"
        )
    lines += [
        "",
        "**Simulator.** `simulator.cluster`: discrete-event, virtual time; each replica is a `FastReplica` "
        "(continuous batching in closed form between events, derived from the PerfModel and validated in "
        "tests/unit/simulator/test_cluster.py against the engine's own `BatchScheduler` stepped iteration by "
        "iteration). Every policy runs inside the operator's scaling loop (`autoscaler/loop.py`: knobs, bounds, "
        "measured cold start, staleness, state), and the production ones (Ebbtide, reactive) are built by the "
        "operator's own factory. The loop sees the replicas through vLLM's metrics, aggregated by the operator's "
        "code (`autoscaler/observation.py`): the request rate is the increase of `vllm:request_success_total` "
        "(completions, not arrivals; a backlog shows as the waiting gauge), TTFT and ITL quantiles come from "
        "bucket deltas of vLLM's histograms, draining replicas are not scraped, and the first tick (no previous "
        "scrape) is stale.",
        "",
        "**Baselines.** Static peak: a fixed count (knob: replicas). Reactive: HPA-like target tracking of "
        "utilisation of the profiled capacity, 10% tolerance, 300 s scale-down stabilization (knob: target "
        "utilisation). KPA-like: Knative's concurrency autoscaler, 60 s stable / 6 s panic windows (knob: target "
        "utilisation). Point forecast: a Holt forecaster's median over the lead time plus headroom (knob: "
        "headroom). Ebbtide: probabilistic forecast, learned capacity, expected-cost choice (knob: risk). "
        "Oracle: the realised future demand at 10 s resolution over the lead time, exact profiled capacity, "
        "no stabilization (knob: headroom); the cost floor for this capacity model. It foresees every burst, "
        "which no forecaster can, so a level oracle runs beside it: the same rule fed the future's 5-minute "
        "means, i.e. the most a perfect forecast of the demand level (not of its sub-minute noise) could know.",
        "",
        f"**Protocol.** {'Quick run: fewer knob values and shorter spans. ' if quick else ''}Each policy's knob "
        "is swept (and extended, up to two rounds of two values, when every point meets the target or none does); "
        "GPU-hours at the target are interpolated linearly between the cheapest sweep point meeting "
        "it and the best one below it. Warm-ups are simulated but not measured: the six hours before an m-mid "
        "sweep window, and for Azure the same hour replayed once before, so forecasters start with history.",
        "",
        f"Machine: {platform.machine()}, {platform.python_version()}, {jobs} worker process(es).",
        "",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.autoscaler", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one m-mid day and one Azure hour, 3 knobs each")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    suffix = "-quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    plan = studies(args.quick)
    kinds = sorted({s.sweep.length_kind for s in plan})
    cals = {kind: calibrate(kind) for kind in kinds}

    sweep: list[RunSpec] = []
    for study in plan:
        specs, initial = sweep_specs(study, cals[study.sweep.length_kind], args.quick)
        print(f"{study.title}: {len(specs)} sweep runs, initial replicas {initial}", flush=True)
        sweep += specs
    sweep_results = run_all(sweep, args.jobs, progress)
    for _ in range(BRACKET_ROUNDS):
        more = bracket_specs(sweep_results)
        if not more:
            break
        print(f"bracketing the target: {len(more)} more sweep runs", flush=True)
        sweep_results += run_all(more, args.jobs, progress)

    evals: list[RunSpec] = []
    chosen: dict[str, dict[str, AtTarget]] = {}
    for study in plan:
        runs = [r for r in sweep_results if r.spec.scenario == study.sweep]
        chosen[study.title] = choose(runs)
        if study.evaluate is not None:
            cal = cals[study.evaluate.length_kind]
            initial = initial_replicas(load_series(study.evaluate).need(cal.profile))
            for name, pick in chosen[study.title].items():
                evals.append(
                    RunSpec(study.evaluate, name, pick.chosen.spec.value, cal, initial, "eval", keep_timeline=True)
                )
    eval_results = run_all(evals, args.jobs, progress) if evals else []

    write_report(args, plan, cals, sweep_results, eval_results, chosen, time.perf_counter() - t0, suffix)
    return 0


def write_report(
    args: argparse.Namespace,
    plan: list[Study],
    cals: dict[str, Calibration],
    sweep_results: list[RunResult],
    eval_results: list[RunResult],
    chosen: dict[str, dict[str, AtTarget]],
    elapsed_s: float,
    suffix: str,
) -> None:
    """Markdown, JSON and plots."""
    out: Path = args.out
    lines = [
        f"# Autoscaler benchmark{' (quick)' if args.quick else ''}",
        "",
        f"Generated by `python -m bench.autoscaler{' --quick' if args.quick else ''}` in {elapsed_s / 60:.0f} "
        "minutes. Every number below was measured in this run.",
        "",
        *setup_lines(cals, args.quick, args.jobs),
    ]
    pareto_groups: dict[str, list[RunResult]] = {}
    for study in plan:
        runs = [r for r in sweep_results if r.spec.scenario == study.sweep]
        pareto_groups[study.sweep.label] = runs
        points = chosen[study.title]
        oracle = points.get("oracle")
        lines += [
            f"## {study.title}: {study.sweep.label}",
            "",
            f"GPU-hours at {BENCH_SLO.attainment:.0%} SLO attainment (interpolated from the knob sweep):",
            "",
            *target_table(points, BENCH_SLO.attainment),
            "",
            "Against the issue's targets (sweep window):",
            "",
            *goal_lines(points),
            "",
            "<details><summary>Every sweep run</summary>",
            "",
            *runs_table(
                sorted(runs, key=lambda r: (POLICY_ORDER.index(r.spec.policy), r.gpu_hours)),
                oracle.gpu_hours if oracle is not None else None,
            ),
            "",
            "</details>",
            "",
        ]
        evals = [r for r in eval_results if r.spec.scenario == study.evaluate]
        if evals and study.evaluate is not None:
            o = next((r.gpu_hours for r in evals if r.spec.policy == "oracle"), None)
            lines += [
                f"### All of {study.evaluate.label}, each policy at its chosen knob",
                "",
                *runs_table(sorted(evals, key=lambda r: POLICY_ORDER.index(r.spec.policy)), o),
                "",
                "Hours below 95% attainment: " + "; ".join(f"{r.spec.policy} {hourly_misses(r)}" for r in evals) + ".",
                "",
            ]
    plot_pareto(pareto_groups, BENCH_SLO.attainment, out / f"autoscaler{suffix}_pareto.png")
    day_source, capacity = _day_runs(plan, sweep_results, eval_results, chosen, cals)
    if day_source:
        warm = plan[0].sweep.warmup_s
        window = (4 * DAY_S, 5 * DAY_S) if eval_results else (warm, warm + DAY_S)
        day = 5
        title = f"ServeGen m-mid day {day}: ready replicas vs demand, each policy at its chosen knob"
        plot_day(day_source, capacity, window, title, out / f"autoscaler{suffix}_day.png")
    speed = [r.requests_per_wall_s for r in sweep_results + eval_results if r.requests > 100_000]
    lines += [
        "## Plots",
        "",
        f"![GPU-hours vs SLO attainment](autoscaler{suffix}_pareto.png)",
        "",
        f"![Replicas vs demand over a day](autoscaler{suffix}_day.png)",
        "",
        "## Simulation speed",
        "",
        f"Median {np.median(speed):,.0f} simulated requests per wall second per worker over runs of more than "
        f"100k requests (policy decisions included)."
        if speed
        else "",
        "",
    ]
    (out / f"autoscaler{suffix}.md").write_text("\n".join(lines))
    payload = {
        "calibration": {
            k: {"request_rate": c.profile.request_rate, "kpa_concurrency": c.kpa_concurrency, "tried": c.sweep}
            for k, c in cals.items()
        },
        "runs": [result_json(r) for r in sweep_results + eval_results],
    }
    (out / f"autoscaler{suffix}.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {out / f'autoscaler{suffix}.md'}")


def _day_runs(
    plan: list[Study],
    sweep_results: list[RunResult],
    eval_results: list[RunResult],
    chosen: dict[str, dict[str, AtTarget]],
    cals: dict[str, Calibration],
) -> tuple[list[RunResult], float]:
    study = plan[0]
    capacity = cals[study.sweep.length_kind].profile.request_rate
    if eval_results:
        return [r for r in eval_results if r.spec.scenario == study.evaluate], capacity
    return [p.chosen for p in chosen[study.title].values()], capacity


if __name__ == "__main__":
    sys.exit(main())
