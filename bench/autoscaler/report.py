"""Turn benchmark runs into the comparison at the SLO target, a markdown table and two plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.autoscaler.runner import KNOBS, POLICY_LABELS, POLICY_ORDER, RunResult


@dataclass(frozen=True)
class AtTarget:
    """A policy's cost at the attainment target, from its knob sweep."""

    policy: str
    gpu_hours: float | None  # interpolated at the target; None when no sweep point reaches it
    chosen: RunResult  # the cheapest sweep point meeting the target (else the one attaining most)
    met: bool
    bracketed: bool  # the target lies between two sweep points (interpolated), not at an end


def at_target(runs: Sequence[RunResult], target: float) -> AtTarget:
    """GPU-hours at `target` attainment: linear between the best point below and the cheapest point above."""
    meeting = [r for r in runs if r.attainment >= target]
    if not meeting:
        best = max(runs, key=lambda r: (r.attainment, -r.gpu_hours))
        return AtTarget(best.spec.policy, None, best, False, False)
    cheapest = min(meeting, key=lambda r: (r.gpu_hours, -r.attainment))
    below = [r for r in runs if r.attainment < target and r.gpu_hours < cheapest.gpu_hours]
    if not below:
        return AtTarget(cheapest.spec.policy, cheapest.gpu_hours, cheapest, True, False)
    lo = max(below, key=lambda r: (r.attainment, -r.gpu_hours))
    w = (target - lo.attainment) / (cheapest.attainment - lo.attainment)
    gpu = lo.gpu_hours + w * (cheapest.gpu_hours - lo.gpu_hours)
    return AtTarget(cheapest.spec.policy, gpu, cheapest, True, True)


def _fmt_knob(r: RunResult) -> str:
    v = r.spec.value
    text = f"{int(v)}" if r.spec.policy == "static-peak" else f"{v:g}"
    return f"{KNOBS[r.spec.policy]} = {text}"


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.2f}%"


def _ms(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{1000 * x:.0f}"


def runs_table(runs: Sequence[RunResult], oracle_gpu_h: float | None) -> list[str]:
    """Markdown rows, one per run."""
    rows = [
        "| policy | knob | GPU-hours | vs oracle | SLO attainment | TTFT p99 ms | ITL p99 ms | failed "
        "| mean / max replicas | scale changes | energy kWh |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ratio = f"{r.gpu_hours / oracle_gpu_h:.2f}x" if oracle_gpu_h else "n/a"
        rows.append(
            f"| {POLICY_LABELS[r.spec.policy]} | {_fmt_knob(r)} | {r.gpu_hours:,.1f} | {ratio} "
            f"| {_pct(r.attainment)} | {_ms(r.ttft_p99_s)} | {_ms(r.itl_p99_s)} | {r.failed:,} "
            f"| {r.mean_ready:.1f} / {r.max_ready} | {r.scale_changes:,} | {r.energy_kwh:,.0f} |"
        )
    return rows


def target_table(points: dict[str, AtTarget], target: float) -> list[str]:
    """Markdown rows: GPU-hours at the target per policy, and the checks against the issue's goals."""
    rows = [
        f"| policy | GPU-hours at {target:.0%} | vs oracle | cheapest knob meeting it | attainment there |",
        "|---|---:|---:|---|---:|",
    ]
    oracle = points.get("oracle")
    o = oracle.gpu_hours if oracle is not None else None
    for name in POLICY_ORDER:
        p = points.get(name)
        if p is None:
            continue
        if p.gpu_hours is None:
            rows.append(
                f"| {POLICY_LABELS[name]} | not reached | n/a | best: {_fmt_knob(p.chosen)} "
                f"| {_pct(p.chosen.attainment)} |"
            )
            continue
        note = "" if p.bracketed else " (sweep end)"
        ratio = f"{p.gpu_hours / o:.2f}x" if o else "n/a"
        rows.append(
            f"| {POLICY_LABELS[name]} | {p.gpu_hours:,.1f}{note} | {ratio} | {_fmt_knob(p.chosen)} "
            f"| {_pct(p.chosen.attainment)} |"
        )
    return rows


def goal_lines(points: dict[str, AtTarget]) -> list[str]:
    """The issue's three targets, each marked met or missed with the measured numbers."""

    def gpu(name: str) -> float | None:
        p = points.get(name)
        return p.gpu_hours if p is not None else None

    ours, oracle, point = gpu("forecast"), gpu("oracle"), gpu("point-forecast")
    reactive = [g for g in (gpu("reactive"), gpu("kpa")) if g is not None]
    best = min(reactive) if reactive else None
    lines = []
    if ours is None:
        return ["- Ebbtide did not reach the attainment target in its sweep: no target can be met."]
    if oracle:
        ok = ours <= 1.15 * oracle
        lines.append(f"- Ebbtide <= 1.15x oracle GPU-hours: {'met' if ok else 'MISSED'} ({ours / oracle:.2f}x)")
    if best is not None:
        saving = 1 - ours / best
        ok = saving >= 0.25
        lines.append(
            f"- Ebbtide >= 25% fewer GPU-hours than the best reactive policy: {'met' if ok else 'MISSED'} "
            f"({saving:+.1%})"
        )
    else:
        lines.append("- Ebbtide vs best reactive: no reactive policy reached the target (counts as met)")
    if point is not None:
        ok = ours < point
        lines.append(f"- Ebbtide beats the point forecaster: {'met' if ok else 'MISSED'} ({ours / point:.2f}x)")
    else:
        lines.append("- Ebbtide vs point forecaster: the point forecaster never reached the target")
    level = gpu("oracle-level")
    if best is not None and (oracle or level):
        parts = [f"{name} {1 - g / best:+.1%}" for name, g in (("10 s oracle", oracle), ("level oracle", level)) if g]
        lines.append(
            "- For scale, perfect foresight's saving against the best reactive policy: " + ", ".join(parts) + "."
        )
    return lines


def plot_pareto(groups: dict[str, list[RunResult]], target: float, path: Path) -> None:
    """GPU-hours vs SLO miss rate, one panel per scenario, one line per policy's knob sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(6.2 * len(groups), 4.8), squeeze=False)
    for ax, (title, runs) in zip(axes[0], groups.items(), strict=True):
        for name in POLICY_ORDER:
            pts = sorted((r for r in runs if r.spec.policy == name), key=lambda r: r.gpu_hours)
            if not pts:
                continue
            miss = [max(1 - r.attainment, 1e-5) for r in pts]
            ax.plot(miss, [r.gpu_hours for r in pts], marker="o", label=POLICY_LABELS[name])
        ax.axvline(1 - target, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("SLO miss rate (1 - attainment), log scale")
        ax.set_ylabel("GPU-hours")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_day(
    runs: Sequence[RunResult], capacity_rps: float, window: tuple[float, float], title: str, path: Path
) -> None:
    """Ready replicas of each policy and the demand (in replicas at profiled capacity) over one window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 5))
    t0, t1 = window
    demand_drawn = False
    for r in sorted(runs, key=lambda r: POLICY_ORDER.index(r.spec.policy)):
        tl = r.timeline
        if not tl:
            continue
        t = tl["t"].astype(float)
        m = (t >= t0) & (t < t1)
        hours = (t[m] - t0) / 3600
        if not demand_drawn:
            ax.fill_between(
                hours, tl["demand_rps"][m] / capacity_rps, step="post", color="lightgrey",
                label="demand / per-replica capacity",
            )  # fmt: skip
            demand_drawn = True
        ax.step(hours, tl["ready"][m], where="post", linewidth=1.2, label=f"{POLICY_LABELS[r.spec.policy]} (ready)")
    ax.set_xlabel("hours")
    ax.set_ylabel("replicas (4 x H100 each)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def hourly_misses(r: RunResult) -> str:
    """Where a run's SLO misses concentrate: hours under 95% attainment."""
    h = r.hourly_attainment
    bad = np.nonzero(np.isfinite(h) & (h < 0.95))[0]
    return f"{len(bad)} h below 95%" if len(bad) else "none below 95%"
