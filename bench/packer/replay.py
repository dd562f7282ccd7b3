"""Replay Monte-Carlo arrivals of the Alibaba trace onto its cluster with one placement policy, FGD-paper style.

Pods arrive one by one and never leave; a pod that fits nowhere fails (and, for "ebbtide+cpsat", first triggers a
small CP-SAT repacking that may move running pods). The policies run the packer's own cores: `ClusterState`,
`greedy.place_gang` with a registered scorer, and `exact.solve`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from bench.packer.baselines import baseline
from bench.packer.trace import TraceNode, TracePod
from packer.exact import ExactConfig, PendingItem, RunningItem, solve
from packer.fragmentation import TargetWorkload
from packer.greedy import place_gang
from packer.plan import SolverStatus
from packer.scoring import EbbtideScorer, ScorerContext
from packer.snapshot import GPU_MILLI, Gang, Placement, PodRequest, RunningGang
from packer.state import ClusterState

POLICIES = ("least-allocated", "most-allocated", "fgd", "ebbtide", "ebbtide+cpsat")


@dataclass(frozen=True)
class ReplayConfig:
    """Knobs of one replay."""

    repack_nodes: int = 6  # nodes in one CP-SAT repacking scope: a target and its receivers
    repack_targets: int = 4  # target nodes tried per failed pod
    repack_budget_s: float = 0.3  # wall-clock budget per repacking solve
    repack_max_calls: int = 400  # solves per replay at most (saturation makes almost every arrival fail)
    repack_workers: int = 1


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
    repack_calls: int = 0
    repack_wins: int = 0
    repack_optimal: int = 0
    moves: int = 0
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


def build_state(nodes: list[TraceNode], seed: int) -> ClusterState:
    """The trace cluster; names get a seeded random prefix so that name tie-breaks are random per seed.

    (The authors' simulator prefixes node names with a random permutation index for the same reason.)
    """
    perm = list(range(len(nodes)))
    random.Random(seed).shuffle(perm)
    width = max(n.gpus for n in nodes)
    free = np.zeros((len(nodes), width), dtype=np.int64)
    for i, n in enumerate(nodes):
        free[i, : n.gpus] = GPU_MILLI
    return ClusterState(
        names=[f"{perm[i]:04d}-{n.name}" for i, n in enumerate(nodes)],
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
    workloads: dict[bool, TargetWorkload],
    seed: int,
    cfg: ReplayConfig,
) -> ReplayResult:
    """Place `seq` in order with `policy`; `workloads[memory_aware]` is the target workload for FGD-style scorers."""
    state = build_state(nodes, seed)
    scorer_name = policy.removesuffix("+cpsat")
    memory = scorer_name == "ebbtide"
    factory = EbbtideScorer if memory else baseline(scorer_name)
    scorer = factory(ScorerContext.of(state, workloads[memory]))
    repack = policy.endswith("+cpsat")
    exact_cfg = ExactConfig(
        time_budget_s=cfg.repack_budget_s, workers=cfg.repack_workers, move_cost=1, seed=seed, max_nodes=64
    )
    capacity = float(state.gpu_count.sum())
    on_node: list[dict[str, RunningGang]] = [{} for _ in range(state.size)]
    res = ReplayResult(trace, policy, seed, capacity, [], [], pods=len(seq))
    arrived = 0
    allocated = 0
    start = time.perf_counter()
    for tp in seq:
        gang = Gang(tp.name, (tp.request,), gpu_products=tp.gpu_products)
        arrived += tp.request.gpu_total_milli
        placed = place_gang(state, gang, scorer)
        if placed is not None:
            row, gpus = placed[0].rows[0], placed[0].gpus[0]
            _track(on_node, state, gang, row, gpus)
            allocated += tp.request.gpu_total_milli
        elif repack and _repack(state, gang, on_node, exact_cfg, cfg, res):
            allocated += tp.request.gpu_total_milli
        else:
            res.failed_pods += 1
        res.arrived_pct.append(100.0 * arrived / GPU_MILLI / capacity)
        res.alloc_pct.append(100.0 * allocated / GPU_MILLI / capacity)
    res.seconds = time.perf_counter() - start
    res.arrived_gpus = arrived / GPU_MILLI
    res.allocated_gpus = allocated / GPU_MILLI
    return res


def _track(
    on_node: list[dict[str, RunningGang]], state: ClusterState, gang: Gang, row: int, gpus: tuple[int, ...]
) -> None:
    pod = gang.pods[0]
    on_node[row][gang.uid] = RunningGang(
        gang.uid,
        (pod,),
        (Placement(pod.name, state.names[row], gpus),),
        movable=True,
        gpu_products=gang.gpu_products,
    )


def _repack(
    state: ClusterState,
    gang: Gang,
    on_node: list[dict[str, RunningGang]],
    exact_cfg: ExactConfig,
    cfg: ReplayConfig,
    res: ReplayResult,
) -> bool:
    """Try to make room for `gang` on one node by moving some of its pods to a few roomy nodes; True if placed.

    Each solve is small on purpose: one target node whose pods may move, plus receivers whose pods stay put.
    Targets: eligible nodes that could host the pod if all their pods left; those with the most GPUs already
    roomy enough for the pod first, then the most free GPU, then by name.
    Receivers: the nodes with the largest free share on one GPU, then the most free CPU, excluding the target.
    """
    pod = gang.pods[0]
    eligible = state.static_mask(gang) & state.fits_capacity(pod)
    held_cpu = np.zeros(state.size, dtype=np.int64)
    for r in np.flatnonzero(eligible):
        held_cpu[r] = sum(g.pods[0].cpu_milli for g in on_node[r].values())
    free_gpu = state.gpu_free.sum(axis=1)
    could = eligible & (state.cpu_free + held_cpu >= pod.cpu_milli) & (free_gpu > 0)
    targets = np.flatnonzero(could)
    if targets.size == 0:
        return False
    ready = (state.gpu_free >= pod.gpu_milli).sum(axis=1) if pod.gpu_count else free_gpu
    targets = targets[np.lexsort((targets, -free_gpu[targets], -ready[targets]))][: cfg.repack_targets]
    # Receivers need both a roomy GPU and CPU: rank by the largest free share on a GPU, then free CPU.
    widest = state.gpu_free.max(axis=1)
    roomy = np.flatnonzero((state.cpu_free > 0) & (widest > 0))
    roomy = roomy[np.lexsort((roomy, -state.cpu_free[roomy], -widest[roomy]))]
    for target in targets:
        if res.repack_calls >= cfg.repack_max_calls:
            return False
        receivers = [int(r) for r in roomy if r != target][: cfg.repack_nodes - 1]
        scope = np.array(sorted([int(target), *receivers]))
        items = [RunningItem(g, evictable=False, movable=True) for g in on_node[target].values()]
        if not items or not _may_clear(state, int(target), pod, on_node[target].values(), scope):
            continue
        res.repack_calls += 1
        result = solve(state, [PendingItem(gang)], items, scope, {}, exact_cfg)
        if result.report.status == SolverStatus.OPTIMAL:
            res.repack_optimal += 1
        placement = result.placed.get(gang.uid)
        if placement is None:
            continue
        moved = {it.gang.uid: it.gang for it in items}
        for uid in sorted(result.moved):
            old = moved[uid]
            opl, opod = old.placements[0], old.pods[0]
            orow = state.row[opl.node]
            state.release(orow, opod, opl.gpu_indices)
            del on_node[orow][uid]
        for uid, new in sorted(result.moved.items()):
            old = moved[uid]
            row, gpus = new.rows[0], new.gpus[0]
            state.allocate(row, old.pods[0], gpus)
            _track(on_node, state, Gang(uid, old.pods, gpu_products=old.gpu_products), row, gpus)
            res.moves += 1
        row, gpus = placement.rows[0], placement.gpus[0]
        state.allocate(row, pod, gpus)
        _track(on_node, state, gang, row, gpus)
        res.repack_wins += 1
        return True
    return False


def _may_clear(
    state: ClusterState, target: int, pod: PodRequest, running: Iterable[RunningGang], scope: np.ndarray
) -> bool:
    """Cheap necessary test before a solve: can enough GPUs of `target` be cleared for `pod` at all?

    A running pod can only move to a GPU with at least its share free, so GPUs holding a pod larger than the
    roomiest GPU in scope stay as they are.
    """
    others = scope[scope != target]
    roomiest = state.gpu_free[others].max(axis=1, initial=0)
    reach = state.gpu_free[target].copy()
    cpu = int(state.cpu_free[target])
    for g in running:
        p, pl = g.pods[0], g.placements[0]
        # A pod can leave only for a receiver with CPU, memory and (if it has GPUs) a GPU with room for it.
        room = (state.cpu_free[others] >= p.cpu_milli) & (state.mem_free[others] >= p.mem_mib)
        if p.gpu_count:
            room &= roomiest >= p.gpu_milli
        if room.any():
            cpu += p.cpu_milli
            for i in pl.gpu_indices:
                reach[i] += p.gpu_milli
    gpus_ok = not pod.gpu_count or int((reach >= pod.gpu_milli).sum()) >= pod.gpu_count
    return gpus_ok and cpu >= pod.cpu_milli
