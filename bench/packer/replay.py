"""Replay Monte-Carlo arrivals of the Alibaba trace onto its cluster with one placement policy, FGD-paper style.

Pods arrive and never leave; a pod that fits nowhere fails. The baselines (`bench/packer/baselines.py`) place pod
by pod on the packer's greedy path. The Ebbtide rows run the operator's own decision: `Packer.decide` on a
`ClusterSnapshot` of the replayed cluster, in passes of `ReplayConfig.pass_size` arrivals, the plan applied
before the next pass. "ebbtide" uses the configuration the scheduling shell builds (`operator_config`);
"ebbtide+cpsat" is the same with moves allowed, which the operator does not run (it never applies a `Move`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace

import numpy as np

from bench.packer.baselines import baseline
from bench.packer.trace import TraceNode, TracePod
from packer import ClusterSnapshot, Gang, Node, Packer, PackerConfig, Placement, Plan, RunningGang, Verdict
from packer.fragmentation import TargetWorkload
from packer.greedy import place_gang
from packer.plan import SolverStatus
from packer.scoring import ScorerContext
from packer.snapshot import GPU_MILLI, PodRequest
from packer.state import ClusterState

BASELINE_POLICIES = ("least-allocated", "most-allocated", "fgd")
PACKER_POLICIES = ("ebbtide", "ebbtide+cpsat")
POLICIES = BASELINE_POLICIES + PACKER_POLICIES


@dataclass(frozen=True)
class ReplayConfig:
    """Knobs of one replay."""

    pass_size: int = 16  # arrivals decided together by one Packer.decide (one scheduling pass)
    repack_nodes: int = 16  # CP-SAT scope of "ebbtide+cpsat" (the operator's 128 would hold hundreds of movable pods)


def operator_config() -> PackerConfig:
    """The packer configuration of the operator's scheduling shell; a unit test holds the two equal."""
    return PackerConfig()


def packer_config(policy: str, cfg: ReplayConfig) -> PackerConfig:
    """The configuration a packer policy decides with: the operator's, plus moves for "ebbtide+cpsat"."""
    base = operator_config()
    if policy == "ebbtide":
        return base
    if policy == "ebbtide+cpsat":
        return replace(base, allow_moves=True, exact_config=replace(base.exact_config, max_nodes=cfg.repack_nodes))
    raise ValueError(f"unknown packer policy {policy!r}; known: {', '.join(PACKER_POLICIES)}")


@dataclass
class ReplayResult:
    """What one replay measured."""

    trace: str
    policy: str
    seed: int
    capacity_gpus: float
    arrived_pct: list[float]  # arrived GPU demand, % of capacity, one point per arrival
    alloc_pct: list[float]  # allocated GPU, % of capacity, same points
    arrived_gpus: float = 0.0
    allocated_gpus: float = 0.0
    failed_pods: int = 0
    passes: int = 0  # Packer.decide calls (packer policies)
    solves: int = 0  # CP-SAT solves inside them
    solves_optimal: int = 0
    exact_placed: int = 0  # pods placed by the exact path
    moves: int = 0  # running pods moved by the exact path
    seconds: float = 0.0
    pods: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def unallocated_gpus(self) -> float:
        """GPUs left unallocated at the end (saturation)."""
        return self.capacity_gpus - self.allocated_gpus

    def alloc_at(self, arrived_pct: float) -> float:
        """Allocation ratio (% of capacity) once `arrived_pct` of capacity has arrived."""
        i = int(np.searchsorted(np.asarray(self.arrived_pct), arrived_pct, side="right")) - 1
        return self.alloc_pct[max(i, 0)]


def node_names(nodes: list[TraceNode], seed: int) -> list[str]:
    """Node names with a seeded random prefix, so that name tie-breaks are random per seed.

    (The authors' simulator prefixes node names with a random permutation index for the same reason.)
    """
    perm = list(range(len(nodes)))
    random.Random(seed).shuffle(perm)
    return [f"{perm[i]:04d}-{n.name}" for i, n in enumerate(nodes)]


def build_state(nodes: list[TraceNode], seed: int) -> ClusterState:
    """The empty trace cluster as the greedy path's arrays."""
    width = max(n.gpus for n in nodes)
    free = np.zeros((len(nodes), width), dtype=np.int64)
    for i, n in enumerate(nodes):
        free[i, : n.gpus] = GPU_MILLI
    return ClusterState(
        names=node_names(nodes, seed),
        gpu_free=free,
        gpu_count=[n.gpus for n in nodes],
        cpu_free=[n.cpu_milli for n in nodes],
        mem_free=[n.mem_mib for n in nodes],
        cpu_cap=[n.cpu_milli for n in nodes],
        mem_cap=[n.mem_mib for n in nodes],
        products=[n.model for n in nodes],
    )


def replay(
    trace: str,
    nodes: list[TraceNode],
    seq: list[TracePod],
    policy: str,
    fgd_workload: TargetWorkload,
    seed: int,
    cfg: ReplayConfig,
) -> ReplayResult:
    """Place `seq` in order with `policy`; `fgd_workload` is the FGD baseline's target workload."""
    if policy in PACKER_POLICIES:
        return _replay_packer(trace, nodes, seq, policy, seed, cfg)
    state = build_state(nodes, seed)
    scorer = baseline(policy)(ScorerContext.of(state, fgd_workload))
    res = ReplayResult(trace, policy, seed, float(state.gpu_count.sum()), [], [], pods=len(seq))
    arrived = allocated = 0
    start = time.perf_counter()
    for tp in seq:
        arrived += tp.request.gpu_total_milli
        if place_gang(state, Gang(tp.name, (tp.request,), gpu_products=tp.gpu_products), scorer) is not None:
            allocated += tp.request.gpu_total_milli
        else:
            res.failed_pods += 1
        res.arrived_pct.append(100.0 * arrived / GPU_MILLI / res.capacity_gpus)
        res.alloc_pct.append(100.0 * allocated / GPU_MILLI / res.capacity_gpus)
    res.seconds = time.perf_counter() - start
    res.arrived_gpus = arrived / GPU_MILLI
    res.allocated_gpus = allocated / GPU_MILLI
    return res


class ReplayCluster:
    """The replayed cluster as the scheduling shell would see it: nodes with what is free, and running gangs."""

    def __init__(self, nodes: list[TraceNode], seed: int) -> None:
        self.nodes = [
            Node(name, [GPU_MILLI] * n.gpus, n.cpu_milli, n.mem_mib, n.cpu_milli, n.mem_mib, n.model)
            for name, n in zip(node_names(nodes, seed), nodes, strict=True)
        ]
        self.by_name = {n.name: n for n in self.nodes}
        self.running: dict[str, RunningGang] = {}

    def snapshot(self, pending: list[Gang]) -> ClusterSnapshot:
        """What the shell hands the packer: every node, every running gang (all movable), the pending gangs."""
        return ClusterSnapshot(self.nodes, list(self.running.values()), pending)

    def apply(self, plan: Plan, pending: list[Gang]) -> set[str]:
        """Carry out `plan` at once (moves first, then bindings); the pending gangs it placed."""
        moved = {m.gang for m in plan.moves}
        for uid in sorted(moved):
            gang = self.running[uid]
            for pod, pl in zip(gang.pods, gang.placements, strict=True):
                self._take(pod, pl, -1)
        for uid in sorted(moved):
            gang = self.running[uid]
            to = {m.pod: Placement(m.pod, m.to_node, m.gpu_indices) for m in plan.moves if m.gang == uid}
            placements = tuple(to.get(pl.pod, pl) for pl in gang.placements)
            for pod, pl in zip(gang.pods, placements, strict=True):
                self._take(pod, pl, +1)
            self.running[uid] = replace(gang, placements=placements)
        placed: set[str] = set()
        by_uid = {g.uid: g for g in pending}
        for d in plan.decisions:
            if d.verdict not in (Verdict.BOUND, Verdict.NOMINATED):
                continue
            new = by_uid[d.gang]
            pods = {p.name: p for p in new.pods}
            placements = tuple(Placement(b.pod, b.node, b.gpu_indices) for b in d.bindings)
            for pl in placements:
                self._take(pods[pl.pod], pl, +1)
            self.running[new.uid] = RunningGang(
                new.uid, new.pods, placements, movable=True, gpu_products=new.gpu_products
            )
            placed.add(new.uid)
        return placed

    def _take(self, pod: PodRequest, pl: Placement, sign: int) -> None:
        node = self.by_name[pl.node]
        node.cpu_free_milli -= sign * pod.cpu_milli
        node.mem_free_mib -= sign * pod.mem_mib
        for i in pl.gpu_indices:
            node.gpu_free_milli[i] -= sign * pod.gpu_milli
            if not 0 <= node.gpu_free_milli[i] <= GPU_MILLI:
                raise ValueError(f"plan over- or under-books GPU {i} of {pl.node}")
        if node.cpu_free_milli < 0 or node.mem_free_mib < 0:
            raise ValueError(f"plan over-books {pl.node}")


def _replay_packer(
    trace: str, nodes: list[TraceNode], seq: list[TracePod], policy: str, seed: int, cfg: ReplayConfig
) -> ReplayResult:
    """Decide arrivals in passes with the operator's `Packer` and apply each plan, as the shell would."""
    # The shell's packer reads a monotonic clock so that the solver budget covers model building.
    packer = Packer(packer_config(policy, cfg), clock=time.monotonic)
    res = ReplayResult(trace, policy, seed, float(sum(n.gpus for n in nodes)), [], [], pods=len(seq))
    start = time.perf_counter()
    decide_in_passes(ReplayCluster(nodes, seed), seq, packer, cfg.pass_size, res)
    res.seconds = time.perf_counter() - start
    return res


def pending_gangs(batch: list[TracePod], first: int) -> list[Gang]:
    """One pass's arrivals as pending gangs; created_s is the arrival index (first come, first served)."""
    return [
        Gang(tp.name, (tp.request,), gpu_products=tp.gpu_products, created_s=float(first + i))
        for i, tp in enumerate(batch)
    ]


def decide_in_passes(
    cluster: ReplayCluster, seq: list[TracePod], packer: Packer, pass_size: int, res: ReplayResult
) -> None:
    """Decide `seq` in passes of `pass_size` on `cluster`, applying each plan; counts go into `res`."""
    arrived = allocated = 0
    for first in range(0, len(seq), pass_size):
        batch = seq[first : first + pass_size]
        pending = pending_gangs(batch, first)
        plan = packer.decide(cluster.snapshot(pending), now=float(first))
        placed = cluster.apply(plan, pending)
        res.passes += 1
        res.solves += len(plan.solver)
        res.solves_optimal += sum(r.status == SolverStatus.OPTIMAL for r in plan.solver)
        res.exact_placed += sum(d.path == "exact" for d in plan.decisions if d.gang in placed)
        res.moves += len(plan.moves)
        for tp in batch:
            arrived += tp.request.gpu_total_milli
            if tp.name in placed:
                allocated += tp.request.gpu_total_milli
            else:
                res.failed_pods += 1
            res.arrived_pct.append(100.0 * arrived / GPU_MILLI / res.capacity_gpus)
            res.alloc_pct.append(100.0 * allocated / GPU_MILLI / res.capacity_gpus)
    res.arrived_gpus = arrived / GPU_MILLI
    res.allocated_gpus = allocated / GPU_MILLI
