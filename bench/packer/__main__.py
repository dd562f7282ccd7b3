"""Run the packer benchmark: `python -m bench.packer [--quick]`.

Three parts, each can be skipped: (1) FGD-style replay of the Alibaba GPU trace with three baselines and the
operator's own `Packer` (and the same with moves, which the operator does not run), (2) the priority scenario
suite (Ebbtide vs greedy placement with greedy preemption), (3) greedy decision latency at 1,523 nodes. Writes
bench/results/packer[_quick].json (raw results), .md (tables) and packer[_quick]_*.png; `--render-only` redraws
the tables and plots from an existing .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.packer import latency, priority, report
from bench.packer.latency import LatencyResult
from bench.packer.priority import ScenarioResult
from bench.packer.replay import POLICIES, ReplayConfig, ReplayResult, operator_config, replay
from bench.packer.trace import arrivals, load_nodes, load_pods, subsample, target_workload

FULL_VARIANTS = (
    "default",
    "gpushare40",
    "gpushare80",
    "gpushare100",
    "multigpu20",
    "multigpu40",
    "gpuspec10",
    "gpuspec25",
)
QUICK_VARIANTS = ("default", "gpushare100", "multigpu40", "gpuspec25")
INFLATION = 1.3  # arrived GPU demand at saturation, x cluster GPUs (the FGD paper's 130%)
FGD_POPULARITY = 0.95  # the FGD authors' typical-pod threshold
LATENCY_TARGET_MS = 20.0
CERTIFIED_TARGET = 0.9


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the parts, write the results."""
    ap = argparse.ArgumentParser(prog="python -m bench.packer", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes: 1/4 of the nodes, 4 traces, 1 seed")
    ap.add_argument("--variants", help="comma-separated pod lists (default: all in full mode)")
    ap.add_argument("--seeds", help="comma-separated seeds for the trace replay (default 42,43,44; quick 42)")
    ap.add_argument("--policies", help=f"comma-separated subset of {','.join(POLICIES)}")
    ap.add_argument("--node-fraction", type=float, help="share of trace nodes to keep (quick: 0.25)")
    ap.add_argument("--pass-size", type=int, help=f"arrivals per Packer.decide (default {ReplayConfig().pass_size})")
    ap.add_argument("--priority-seeds", type=int, help="scenarios per cluster size (default 10; quick 4)")
    ap.add_argument("--sizes", help="comma-separated cluster sizes for the priority suite")
    ap.add_argument("--budget", type=float, default=1.0, help="CP-SAT budget per solve in the priority suite (s)")
    ap.add_argument("--skip-trace", action="store_true")
    ap.add_argument("--skip-priority", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="redraw tables and plots from the saved .json")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    args = ap.parse_args(argv)

    quick = args.quick
    prefix = "packer_quick" if quick else "packer"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / f"{prefix}.json"
    if args.render_only:
        raw = json.loads(raw_path.read_text())
    else:
        full_sizes = [20, 50, 100, 200, 500]
        settings: dict[str, Any] = {
            "quick": quick,
            "variants": args.variants.split(",") if args.variants else list(QUICK_VARIANTS if quick else FULL_VARIANTS),
            "seeds": [int(s) for s in args.seeds.split(",")] if args.seeds else ([42] if quick else [42, 43, 44]),
            "policies": args.policies.split(",") if args.policies else list(POLICIES),
            "node_fraction": args.node_fraction or (0.25 if quick else 1.0),
            "sizes": [int(s) for s in args.sizes.split(",")]
            if args.sizes
            else ([20, 50, 100] if quick else full_sizes),
            "per_size": args.priority_seeds or (4 if quick else 10),
            "budget_s": args.budget,
            "replay": asdict(ReplayConfig(pass_size=args.pass_size) if args.pass_size else ReplayConfig()),
        }
        started = time.time()
        raw = {"settings": settings}
        if not args.skip_trace:
            raw["trace"] = _run_trace(settings)
        if not args.skip_priority:
            raw["priority"] = _run_priority(settings)
        if not args.skip_latency:
            raw["latency"] = _run_latency(settings)
        raw["wall_s"] = time.time() - started
        raw_path.write_text(json.dumps(raw, indent=1))
    md = render(raw, out_dir, prefix)
    (out_dir / f"{prefix}.md").write_text(md)
    print(f"wrote {out_dir / (prefix + '.md')}")
    return 0


# ---- running ---------------------------------------------------------------------------------------------


def _run_trace(settings: dict[str, Any]) -> dict[str, Any]:
    nodes = subsample(load_nodes("gpu"), settings["node_fraction"])
    capacity = sum(n.gpus for n in nodes)
    cfg = ReplayConfig(**settings["replay"])
    rows = []
    for variant in settings["variants"]:
        pods = load_pods(variant)
        fgd_workload = target_workload(pods, memory=False, popularity=FGD_POPULARITY)
        for seed in settings["seeds"]:
            seq = arrivals(pods, capacity * 1000, INFLATION, seed)
            for policy in settings["policies"]:
                r = replay(variant, nodes, seq, policy, fgd_workload, seed, cfg)
                print(
                    f"[trace] {variant:12s} seed {seed} {policy:16s} unallocated {r.unallocated_gpus:7.1f} GPUs "
                    f"({r.alloc_pct[-1]:.2f}% allocated) in {r.seconds:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
                row = {k: v for k, v in asdict(r).items() if k not in ("arrived_pct", "alloc_pct")}
                row["curve"] = [round(float(x), 3) for x in report.curve(r)]
                rows.append(row)
    return {"nodes": len(nodes), "capacity_gpus": capacity, "runs": rows}


def _run_priority(settings: dict[str, Any]) -> list[dict[str, Any]]:
    import ortools.sat.python.cp_model  # noqa: F401  (a one-time import, kept out of the measured decisions)

    out = []
    for n in settings["sizes"]:
        for seed in range(settings["per_size"]):
            r = priority.run_scenario(1000 * n + seed, n, settings["budget_s"])
            print(
                f"[priority] {n:4d} nodes seed {seed}: high-priority GPUs greedy {r.high_gpus_greedy:g} "
                f"ebbtide {r.high_gpus_ebbtide:g}; solves {r.statuses}",
                file=sys.stderr,
                flush=True,
            )
            out.append(asdict(r))
    return out


def _run_latency(settings: dict[str, Any]) -> dict[str, Any]:
    nodes = load_nodes("all")
    quick = settings["quick"]
    results = latency.measure(
        nodes, load_pods("default"), seed=7, samples=150 if quick else 500, decide_samples=20 if quick else 60
    )
    return {"nodes": len(nodes), "results": [asdict(r) for r in results]}


# ---- rendering -------------------------------------------------------------------------------------------


def render(raw: dict[str, Any], out_dir: Path, prefix: str) -> str:
    """The markdown report (and plots) for one run's raw results."""
    s = raw["settings"]
    quick = s["quick"]
    lines = [
        f"# Packer benchmark{' (quick mode)' if quick else ''}",
        "",
        f"Generated by `python -m bench.packer{' --quick' if quick else ''}`. Every number in the tables was computed "
        "in this run (raw results: " + f"`{prefix}.json`).",
        "",
        f"- Hardware: {report.hardware()}. Timings are wall-clock on this shared machine.",
        "- Data: `alibaba-gpu-2023` (Alibaba cluster-trace-gpu-v2023, the FGD paper's trace) from `$EBBTIDE_DATA`.",
        "",
    ]
    checks: list[str] = []
    if "trace" in raw:
        lines += _render_trace(raw["trace"], s, out_dir, prefix, checks)
    if "priority" in raw:
        lines += _render_priority(raw["priority"], s, checks)
    if "latency" in raw:
        lines += _render_latency(raw["latency"], checks)
    if checks:
        lines += ["## Targets", "", *checks, ""]
    lines.append(f"Total benchmark wall time: {raw.get('wall_s', 0):.0f} s.")
    return "\n".join(lines) + "\n"


def _render_trace(trace: dict[str, Any], s: dict[str, Any], out_dir: Path, prefix: str, checks: list[str]) -> list[str]:
    results = [
        ReplayResult(
            **{k: v for k, v in row.items() if k != "curve"},
            arrived_pct=[float(x) for x in report.GRID],
            alloc_pct=row["curve"],
        )
        for row in trace["runs"]
    ]
    plots = report.plot_trace(results, out_dir, prefix)
    cfg = ReplayConfig(**s["replay"])
    op = operator_config()
    fraction = s["node_fraction"]
    for variant in s["variants"]:
        mean = report.mean_unallocated(results, variant)
        # The target is the operator's own decision, so only the "ebbtide" row counts.
        if "fgd" in mean and "ebbtide" in mean:
            verdict = "met" if mean["ebbtide"] <= mean["fgd"] else "**missed**"
            checks.append(
                f"- Unallocated GPUs at saturation ≤ FGD's, `{variant}`: Ebbtide {mean['ebbtide']:.1f} vs FGD "
                f"{mean['fgd']:.1f} — {verdict}."
            )
    return [
        "## 1. Trace replay: GPU allocation vs arrived demand (the FGD paper's experiment)",
        "",
        f"- Cluster: the trace's {trace['nodes']} GPU nodes ({trace['capacity_gpus']} GPUs"
        + (f", every {round(1 / fraction)}th node of each GPU model: quick mode" if fraction < 1 else "")
        + "), the node list the FGD authors' simulator replays onto. CPU, memory, GPU count, GPU share and GPU "
        "model constraints are all enforced.",
        f"- Arrivals (Monte-Carlo, as in the paper): pods drawn with replacement from the pod list until their GPU "
        f"asks reach {INFLATION:.0%} of the cluster's GPUs; pods never leave; a pod that fits nowhere fails. "
        f"Seeds: {', '.join(map(str, s['seeds']))} (the same arrivals for every policy; the seed also shuffles node "
        "names, so name tie-breaks differ per seed).",
        "- Baselines: LeastAllocated (kube-scheduler's default spreading, over CPU/memory/GPU), MostAllocated (the "
        "FGD authors' best-fit score), FGD (the paper's fragmentation gradient: typical pods = the "
        f"{FGD_POPULARITY:.0%} most common shapes of the pod list, CPU pods included; least fragmentation growth "
        "wins, ties to the first node by name). GPU shares go to the fullest GPU with room, except under "
        "FGD/Ebbtide, which pick the GPU by gradient.",
        "- Ebbtide (the operator's decision): `Packer.decide` on a `ClusterSnapshot` of the replayed cluster with the "
        "configuration the scheduling shell builds (`bench.packer.replay.operator_config`, held equal to the shell's "
        "by a unit test): FGD's gradient with memory in the fit test and best fit to settle ties, against the target "
        f"workload the packer learns from the snapshot (the pod shapes covering {op.popularity:.0%} of its running and "
        "pending pods); CP-SAT for what the greedy path leaves, as in the operator (it may re-place the gangs of the "
        "same pass, and evict only strictly lower priorities, which the trace has none of). Arrivals are decided in "
        f"passes of {cfg.pass_size} (first come, first served within a pass), each plan applied before the next pass.",
        "- Ebbtide + CP-SAT moves (**not what the operator runs**: the operator never applies a `Move`): the same "
        f"`Packer` with `allow_moves=True`, every running pod movable, at most {cfg.repack_nodes} nodes in one CP-SAT "
        f"scope (with the operator's {op.exact_config.max_nodes}, every model would hold hundreds of movable pods) and "
        f"the operator's {op.exact_config.time_budget_s:g} s budget per solve. Solves, pods placed by CP-SAT and pods "
        "moved are counted. The 'Ebbtide ≤ FGD' column and the targets judge the operator's row only.",
        *(
            [
                "- One seed: a difference of a few GPUs between two rows may be arrival noise; the full run's ± "
                "columns show the spread across seeds."
            ]
            if len(s["seeds"]) == 1
            else []
        ),
        "",
        *report.trace_tables(results),
        "Reading it: the FGD paper reports its gradient well ahead of best fit on these pod lists; the 'FGD vs best "
        "fit' column shows whether this reimplementation reproduces that here (negative = FGD leaves fewer GPUs "
        "unallocated).",
        "",
        "Plots: " + ", ".join(f"`{p.name}`" for p in plots) + ".",
        "",
    ]


def _render_priority(rows: list[dict[str, Any]], s: dict[str, Any], checks: list[str]) -> list[str]:
    results = [ScenarioResult(**r) for r in rows]
    sizes = s["sizes"]
    summaries = [priority.summarize([r for r in results if r.nodes == n], str(n)) for n in sizes]
    small = [r for r in results if r.nodes <= 100]
    large = [r for r in results if r.nodes > 100]
    if small and large:
        summaries += [priority.summarize(small, "≤ 100"), priority.summarize(large, "> 100")]
    summaries.append(priority.summarize(results, "all"))
    if small:
        share = priority.summarize(small, "").certified
        verdict = "met" if share >= CERTIFIED_TARGET else "**missed**"
        checks.append(
            f"- Certified optimal within {s['budget_s']:g} s in ≥ {CERTIFIED_TARGET:.0%} of scenarios up to 100 nodes: "
            f"{share:.0%} — {verdict}."
        )
    return [
        "## 2. Priority scenarios: Ebbtide vs greedy placement",
        "",
        f"- Generator (seeded, `bench/packer/priority.py`): clusters of {', '.join(map(str, sizes))} nodes (8 or "
        "4 GPUs, two GPU products, racks of 8), 85-98% full of running fine-tuning and serving gangs (GPU shares "
        "included) at 2-3 priority classes, with services under PDB/minReplicas budgets; a burst of pending gangs "
        "(shares, 1-4 GPUs, whole nodes, 2-4-node rack-local gangs, some product-constrained) at mixed priorities. "
        f"{s['per_size']} scenarios per size, seeds 1000·size + 0..{s['per_size'] - 1}.",
        "- Greedy placement: Ebbtide's greedy path plus kube-scheduler-style preemption (pod by pod, the node whose "
        "cheapest sufficient victim set has the lowest highest-victim priority, then fewest victims, then least "
        "work lost). Ebbtide: the same, then one CP-SAT solve per priority class seeded with the greedy answer "
        f"(budget {s['budget_s']:g} s per solve including model building, 2 workers, at most 128 nodes in scope); "
        "the better answer is kept.",
        "- 'High-priority GPUs' = GPUs of placed (bound or nominated) gangs of the top pending class. A failure case "
        "is a scenario where greedy left a schedulable top-class gang waiting (the 'Priority Matters' framing).",
        "",
        *report.priority_tables(summaries, results),
        "",
    ]


def _render_latency(lat: dict[str, Any], checks: list[str]) -> list[str]:
    results = [LatencyResult(**r) for r in lat["results"]]
    for r in results:
        if r.scorer == "ebbtide":
            verdict = "met" if r.p99_ms < LATENCY_TARGET_MS else "**missed**"
            checks.append(
                f"- Greedy p99 < {LATENCY_TARGET_MS:g} ms per gang at {lat['nodes']} nodes (`{r.path}`): "
                f"{r.p99_ms:.1f} ms — {verdict}."
            )
    return [
        f"## 3. Decision latency at {lat['nodes']:,} nodes (greedy path)",
        "",
        f"- Cluster: all {lat['nodes']} trace nodes, loaded to 70% of GPUs with trace pods; gangs are trace pods, one "
        "in ten a 2 × 8-GPU rack-local gang (racks of 16 nodes). Each gang is decided against the same state.",
        "- `place_gang`: the scheduler's hot path on its live `ClusterState`. `decide`: `Packer.decide` from a "
        "`ClusterSnapshot` with one pending gang (includes turning the snapshot into arrays).",
        "",
        *report.latency_table(results),
        "",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
