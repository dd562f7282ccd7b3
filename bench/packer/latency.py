"""Decision latency of the greedy path at trace scale (1,523 nodes): per gang on a live state, and per decide()."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np

from bench.packer.baselines import BASELINES, MostAllocated
from bench.packer.replay import build_state
from bench.packer.trace import TraceNode, TracePod, target_workload
from packer import ClusterSnapshot, Gang, Node, Packer, PackerConfig, PodRequest
from packer.greedy import place_gang
from packer.scoring import EbbtideScorer, ScorerContext, ScorerFactory
from packer.state import ClusterState, undo_all

RACK = "topology.ebbtide.dev/rack"


@dataclass(frozen=True)
class LatencyResult:
    """Per-gang decision times of one scorer, milliseconds."""

    scorer: str
    path: str  # "place_gang" (live state) or "decide" (snapshot in, plan out)
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def _fill(state: ClusterState, pods: list[TracePod], target: float, rng: random.Random) -> None:
    """Load the cluster to `target` of its GPUs with trace pods (best fit, to get there quickly)."""
    scorer = MostAllocated(ScorerContext.of(state, target_workload(pods, False)))
    capacity = int(state.gpu_count.sum()) * 1000
    misses = 0
    while capacity - int(state.gpu_free.sum()) < target * capacity and misses < 200:
        tp = pods[rng.randrange(len(pods))]
        if place_gang(state, Gang(f"fill-{rng.random()}", (tp.request,), gpu_products=tp.gpu_products), scorer) is None:
            misses += 1


def _gangs(pods: list[TracePod], n: int, rng: random.Random) -> list[Gang]:
    """Trace pods as single-pod gangs, plus one in ten a 2 x 8-GPU gang that must stay in one rack."""
    out = []
    for i in range(n):
        if i % 10 == 9:
            out.append(
                Gang(f"multi-{i}", tuple(PodRequest(f"m{i}-{k}", 16000, 65536, 8) for k in range(2)), topology_key=RACK)
            )
        else:
            tp = pods[rng.randrange(len(pods))]
            out.append(Gang(f"g-{i}", (tp.request,), gpu_products=tp.gpu_products))
    return out


def measure(
    nodes: list[TraceNode], pods: list[TracePod], seed: int, samples: int, decide_samples: int, fill: float = 0.7
) -> list[LatencyResult]:
    """p50/p99 per gang for every scorer (the baselines and Ebbtide's), on a cluster loaded to `fill`."""
    rng = random.Random(seed)
    state = build_state(nodes, seed)
    state.labels = [{RACK: f"rack-{r // 16:03d}"} for r in range(state.size)]
    _fill(state, pods, fill, rng)
    gangs = _gangs(pods, samples, rng)
    workloads = {False: target_workload(pods, False), True: target_workload(pods, True)}
    results = []
    scorers: dict[str, ScorerFactory] = {**BASELINES, EbbtideScorer.name: EbbtideScorer}
    for name, factory in scorers.items():
        scorer = factory(ScorerContext.of(state, workloads[name == EbbtideScorer.name]))
        times = []
        for gang in gangs:
            start = time.perf_counter()
            placed = place_gang(state, gang, scorer)
            times.append(time.perf_counter() - start)
            if placed is not None:
                undo_all(placed[1])  # measure every gang against the same state
        results.append(_summary(name, "place_gang", times))
    snapshot = _snapshot(state)
    cfg = PackerConfig(exact=False, preemption=False, workload=workloads[True])
    times = []
    for gang in gangs[:decide_samples]:
        snap = ClusterSnapshot(snapshot.nodes, [], [gang], {})
        start = time.perf_counter()
        Packer(cfg).decide(snap, now=0.0)
        times.append(time.perf_counter() - start)
    results.append(_summary(EbbtideScorer.name, "decide", times))
    return results


def _snapshot(state: ClusterState) -> ClusterSnapshot:
    nodes = [
        Node(
            state.names[r],
            [int(x) for x in state.gpu_free[r, : state.gpu_count[r]]],
            int(state.cpu_free[r]),
            int(state.mem_free[r]),
            int(state.cpu_cap[r]),
            int(state.mem_cap[r]),
            state.product_names[state.product[r]],
            dict(state.labels[r]),
        )
        for r in range(state.size)
    ]
    return ClusterSnapshot(nodes)


def _summary(scorer: str, path: str, times: list[float]) -> LatencyResult:
    ms = np.asarray(times) * 1000.0
    return LatencyResult(
        scorer, path, len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.max())
    )
