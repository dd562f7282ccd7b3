"""Plots of `bench.scale` results: how each figure grows from one run to the next (nodes, gangs), from the JSON the
runs wrote. `python -m bench.scale_report bench/results/scale-*.json --out bench/results/scale.png`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or a server
import matplotlib.pyplot as plt

TARGET_BOUND_P99_S = 2.0  # issue 18: apply -> bound p99 per gang at 2,000 nodes
TARGET_RSS_MB = 300.0


def run_label(r: dict[str, Any]) -> str:
    return f"{r['nodes']} nodes\n{r['gangs']} gangs\n({r['label']})"


def plot(results: list[dict[str, Any]], out: Path) -> Path:
    """A 2x2 figure: apply->bound and apply->Ready (p50, p99), peak RSS, API requests/s (burst, idle)."""
    results = sorted(results, key=lambda r: (r["nodes"], r["gangs"], r["label"]))
    labels = [run_label(r) for r in results]
    x = list(range(len(results)))
    w = 0.38
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))

    def bars(ax: Any, left: list[float], right: list[float], names: tuple[str, str], unit: str, title: str) -> None:
        ax.bar([i - w / 2 for i in x], left, w, label=names[0])
        ax.bar([i + w / 2 for i in x], right, w, label=names[1])
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)

    # Runs since the API server's acceptance of each object was recorded are timed from it; older runs from the
    # start of their burst's kubectl apply (which sends the objects one by one), as their JSON says.
    bound = [r.get("accepted_to_bound_s") or r["apply_to_bound_s"] for r in results]
    bars(axes[0][0], [b["p50"] for b in bound], [b["p99"] for b in bound], ("p50", "p99"), "s", "apply -> gang bound")
    axes[0][0].axhline(TARGET_BOUND_P99_S, color="red", linestyle="--", label="target p99")
    axes[0][0].legend(fontsize=8)
    ready = [r.get("accepted_to_ready_s") or r["apply_to_ready_s"] for r in results]
    bars(axes[0][1], [b["p50"] for b in ready], [b["p99"] for b in ready], ("p50", "p99"), "s", "apply -> Ready")
    axes[0][1].legend(fontsize=8)
    rss = [r["peak_rss_mb"] for r in results]
    bars(
        axes[1][0],
        [m.get("operator", 0.0) for m in rss],
        [m.get("kube-apiserver", 0.0) for m in rss],
        ("operator", "kube-apiserver"),
        "MB",
        "peak RSS",
    )
    axes[1][0].axhline(TARGET_RSS_MB, color="red", linestyle="--", label="operator target")
    axes[1][0].legend(fontsize=8)
    api = [r["api_total_per_s"] for r in results]
    own = [r.get("operator_api_total_per_s", {}).get("idle", 0.0) for r in results]
    bars(axes[1][1], [a["idle"] for a in api], own, ("whole cluster", "the operator's own"), "requests/s",
         "API requests, idle")  # fmt: skip
    axes[1][1].legend(fontsize=8)
    fig.suptitle("bench.scale on the local control plane with KWOK nodes (each run's host in its JSON)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("results", nargs="+", type=Path, help="scale-*.json files written by bench.scale")
    p.add_argument("--out", type=Path, default=Path("bench/results/scale.png"))
    args = p.parse_args()
    # The file names tell repeated runs of one label apart (scale-small-run1.json, scale-small-run2.json).
    runs = [{**json.loads(f.read_text()), "label": f.stem.removeprefix("scale-")} for f in args.results]
    print(plot(runs, args.out))


if __name__ == "__main__":
    main()
