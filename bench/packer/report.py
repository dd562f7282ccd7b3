"""Markdown tables and matplotlib plots for the packer benchmark; every figure comes from the run's results."""

from __future__ import annotations

import platform
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.packer.latency import LatencyResult
from bench.packer.priority import ScenarioResult, SuiteSummary
from bench.packer.replay import PACKER_POLICIES, POLICIES, ReplayResult

LABELS = {
    "least-allocated": "LeastAllocated (kube-scheduler-like)",
    "most-allocated": "MostAllocated (best fit)",
    "fgd": "FGD (paper's gradient)",
    "ebbtide": "Ebbtide (the operator's Packer)",
    "ebbtide+cpsat": "Ebbtide + CP-SAT moves (not run by the operator)",
}
GRID = np.arange(0, 131, 1.0)  # arrived GPU demand, % of capacity, as in the paper's plots


def hardware() -> str:
    """CPU model and count from /proc/cpuinfo, plus the Python and library versions."""
    model, cpus = "unknown CPU", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                cpus += 1
    except OSError:
        pass
    from importlib.metadata import version

    return (
        f"{cpus} x {model} ({platform.machine()}), shared with other jobs; Python {platform.python_version()}, "
        f"numpy {np.__version__}, OR-Tools {version('ortools')}"
    )


def _mean_sd(xs: Sequence[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def _mean(xs: Sequence[float]) -> str:
    return f"{statistics.fmean(xs):.0f}"


def curve(r: ReplayResult) -> np.ndarray:
    """Allocation ratio (% of GPUs) on the 0..130% arrived grid."""
    return np.array([r.alloc_at(x) for x in GRID])


def mean_unallocated(results: list[ReplayResult], variant: str) -> dict[str, float]:
    """Mean unallocated GPUs at saturation per policy for one trace variant."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in results:
        if r.trace == variant:
            out[r.policy].append(r.unallocated_gpus)
    return {p: statistics.fmean(v) for p, v in out.items()}


def trace_tables(results: list[ReplayResult]) -> list[str]:
    """Per-variant tables and a summary of unallocated GPUs at saturation."""
    by: dict[tuple[str, str], list[ReplayResult]] = defaultdict(list)
    for r in results:
        by[(r.trace, r.policy)].append(r)
    variants = sorted({r.trace for r in results}, key=lambda v: (v != "default", v))
    policies = [p for p in POLICIES if any((v, p) in by for v in variants)]
    out: list[str] = []

    def unalloc(v: str, p: str) -> float:
        return statistics.fmean([r.unallocated_gpus for r in by[(v, p)]])

    header = " | ".join(LABELS[p] for p in policies)
    out.append(f"| trace | {header} | Ebbtide ≤ FGD | FGD vs best fit (unallocated) |")
    out.append("|---" * (len(policies) + 3) + "|")
    for v in variants:
        cells = [_mean_sd([r.unallocated_gpus for r in by[(v, p)]]) if (v, p) in by else "–" for p in policies]
        ok = "yes" if unalloc(v, "ebbtide") <= unalloc(v, "fgd") else "**no**"
        bf, fgd = unalloc(v, "most-allocated"), unalloc(v, "fgd")
        change = f"{100 * (fgd - bf) / bf:+.0f}%" if bf > 0 else "–"
        out.append(f"| {v} | " + " | ".join(cells) + f" | {ok} | {change} |")
    out.append("")
    out.append("Unallocated GPUs at saturation (arrived demand = 130% of the cluster's GPUs), mean ± sd over seeds.")
    out.append("")
    for v in variants:
        out.append(f"#### {v}")
        out.append("")
        out.append(
            "| policy | alloc % at 100% arrived | alloc % at 130% | unallocated GPUs | vs best fit | vs FGD "
            "| failed pods | CP-SAT solves (optimal) | pods placed by CP-SAT | pods moved | s / run |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        bf, fgd = unalloc(v, "most-allocated"), unalloc(v, "fgd")
        for p in policies:
            rs = by.get((v, p))
            if not rs:
                continue
            u = unalloc(v, p)
            solves = exact = moves = "–"
            if p in PACKER_POLICIES:
                solves = f"{_mean([r.solves for r in rs])} ({_mean([r.solves_optimal for r in rs])})"
                exact, moves = _mean([r.exact_placed for r in rs]), _mean([r.moves for r in rs])
            out.append(
                f"| {LABELS[p]} | {statistics.fmean([r.alloc_at(100) for r in rs]):.2f} "
                f"| {statistics.fmean([r.alloc_pct[-1] for r in rs]):.2f} "
                f"| {_mean_sd([r.unallocated_gpus for r in rs])} "
                f"| {100 * (u - bf) / bf:+.1f}% | {100 * (u - fgd) / fgd:+.1f}% "
                f"| {_mean([r.failed_pods for r in rs])} | {solves} | {exact} | {moves} "
                f"| {statistics.fmean([r.seconds for r in rs]):.1f} |"
            )
        out.append("")
    return out


def plot_trace(results: list[ReplayResult], out_dir: Path, prefix: str) -> list[Path]:
    """One allocation-vs-arrived plot per variant and a bar chart of unallocated GPUs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    variants = sorted({r.trace for r in results}, key=lambda v: (v != "default", v))
    for v in variants:
        fig, (ax, zoom) = plt.subplots(1, 2, figsize=(11, 4))
        for p in POLICIES:
            rs = [r for r in results if r.trace == v and r.policy == p]
            if not rs:
                continue
            y = np.mean([curve(r) for r in rs], axis=0)
            style = "--" if p.endswith("+cpsat") else "-"  # it often overlays Ebbtide greedy exactly
            ax.plot(GRID, y, style, label=LABELS[p])
            zoom.plot(GRID, y, style, label=LABELS[p])
        ax.plot(GRID, np.minimum(GRID, 100), "k:", linewidth=0.8, label="arrived (ideal)")
        for a in (ax, zoom):
            a.set_xlabel("arrived GPU demand (% of cluster GPUs)")
            a.set_ylabel("GPU allocation ratio (%)")
            a.grid(alpha=0.3)
        zoom.set_xlim(80, 130)
        lo = min(float(np.min([curve(r)[80:] for r in results if r.trace == v])) - 1, 95)
        zoom.set_ylim(lo, 100)
        ax.legend(fontsize=7, loc="upper left")
        fig.suptitle(f"Alibaba GPU trace 2023, pod list '{v}' (mean over seeds)")
        fig.tight_layout()
        path = out_dir / f"{prefix}_alloc_{v}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(variants)), 4))
    width = 0.8 / len(POLICIES)
    for i, p in enumerate(POLICIES):
        ys = [
            statistics.fmean([r.unallocated_gpus for r in results if r.trace == v and r.policy == p] or [0])
            for v in variants
        ]
        ax.bar(np.arange(len(variants)) + i * width, ys, width, label=LABELS[p])
    ax.set_xticks(np.arange(len(variants)) + width * (len(POLICIES) - 1) / 2, variants, rotation=20)
    ax.set_ylabel("unallocated GPUs at saturation")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out_dir / f"{prefix}_unallocated.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def priority_tables(summaries: list[SuiteSummary], scenarios: list[ScenarioResult]) -> list[str]:
    """The priority suite, one row per size bucket."""
    out = [
        "| nodes | scenarios | Ebbtide places more high-priority GPUs | equal | fewer | greedy failure cases "
        "| …of which Ebbtide places more | scenarios with CP-SAT | certified optimal (every solve) "
        "| evictions greedy / Ebbtide (mean) | Ebbtide decision p50 / max (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        out.append(
            f"| {s.bucket} | {s.scenarios} | {100 * s.more_high:.0f}% | {100 * s.equal_high:.0f}% "
            f"| {100 * s.fewer_high:.0f}% | {s.failure_cases} | {100 * s.more_high_in_failures:.0f}% "
            f"| {s.with_solves} | {100 * s.certified:.0f}% | {s.mean_evictions_greedy:.1f} / "
            f"{s.mean_evictions_ebbtide:.1f} | {s.p50_decision_s:.2f} / {s.max_decision_s:.2f} |"
        )
    statuses: dict[str, int] = defaultdict(int)
    for r in scenarios:
        for st in r.statuses:
            statuses[st] += 1
    solve_times = [r.max_solve_s for r in scenarios if r.solves]
    out.append("")
    out.append(
        "CP-SAT solves by status: "
        + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        + (f"; slowest solve {max(solve_times):.2f} s (solver wall time)." if solve_times else ".")
    )
    return out


def latency_table(results: list[LatencyResult]) -> list[str]:
    """Decision latency per gang."""
    out = ["| scorer | path | gangs | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for r in results:
        out.append(f"| {r.scorer} | {r.path} | {r.samples} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.max_ms:.2f} |")
    return out
