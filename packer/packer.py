"""`Packer.decide(snapshot, now) -> Plan`: the whole placement decision for one snapshot.

Pending gangs go by priority class, highest first. Within a class each gang is tried on the fast greedy path. The
ones that do not fit get a kube-scheduler-style greedy victim search, and then, together, the exact CP-SAT path
seeded with that answer (it may also re-place the gangs this plan already placed, evict lower-priority gangs and,
when allowed, move running ones); the better of the two answers is kept. What still does not fit waits. Gangs that
could never fit get an `unschedulable` verdict and trigger no preemption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby

import numpy as np

from packer.exact import ExactConfig, ExactResult, PendingItem, RunningItem, solve
from packer.fragmentation import TargetWorkload, WorkloadShape
from packer.greedy import GangPlacement, place_gang, unschedulable_reason
from packer.plan import Binding, Eviction, GangDecision, Move, Plan, SolverReport, Verdict
from packer.preemption import (
    CostModel,
    PreemptionResult,
    ServiceLedger,
    greedy_preemption,
    may_preempt,
    release_gang,
    work_lost_s,
)
from packer.scoring import EbbtideScorer, Scorer, ScorerContext, ScorerFactory
from packer.snapshot import GPU_MILLI, ClusterSnapshot, Gang, GangKind, Placement, RunningGang
from packer.state import ClusterState, Undo, undo_all

# Used when a snapshot carries no pods to learn the workload from: whole GPUs in the common gang sizes.
_FALLBACK_SHAPES = tuple(WorkloadShape(0, 0, n, GPU_MILLI) for n in (1, 2, 4, 8))


@dataclass(frozen=True)
class PackerConfig:
    """How the packer decides; one sentence per knob."""

    scorer: ScorerFactory = EbbtideScorer  # greedy scorer; always Ebbtide's in the operator
    exact: bool = True  # run CP-SAT for gangs the greedy path cannot place
    preemption: bool = True  # allow evicting strictly lower-priority gangs
    allow_moves: bool = False  # let the exact path restart movable running gangs elsewhere (the operator never does)
    exact_config: ExactConfig = field(default_factory=ExactConfig)
    costs: CostModel = field(default_factory=CostModel)
    max_domains: int = 32  # topology domains the greedy path tries per gang
    workload: TargetWorkload | None = None  # target workload for fragmentation; learned from the snapshot if None
    popularity: float = 0.99  # share of pods the learned target workload covers

    def __post_init__(self) -> None:
        if self.max_domains < 1:
            raise ValueError("max_domains must be at least 1")


def gang_order(gangs: Sequence[Gang]) -> list[Gang]:
    """Pending gangs in decision order.

    Ordering: (1) priority descending, (2) creation time ascending (FIFO within a class), (3) uid.
    """
    return sorted(gangs, key=lambda g: (-g.priority, g.created_s, g.uid))


@dataclass
class _Outcome:
    verdict: Verdict
    reason: str
    placement: GangPlacement | None = None
    undos: list[Undo] = field(default_factory=list)
    path: str = ""
    victims: tuple[str, ...] = ()


@dataclass
class _Round:
    """Mutable bookkeeping of one decide() call; never visible outside it."""

    state: ClusterState
    scorer: Scorer
    now: float
    running: dict[str, RunningGang]
    ledger: ServiceLedger
    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    evictions: list[Eviction] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    reports: list[SolverReport] = field(default_factory=list)


class Packer:
    """The placement core the Kubernetes shell and the simulator both call."""

    def __init__(self, config: PackerConfig | None = None, clock: Callable[[], float] | None = None) -> None:
        """`clock` (a monotonic seconds source, e.g. time.monotonic) lets the solver budget cover model building."""
        self.config = config or PackerConfig()
        self.clock = clock

    def decide(self, snapshot: ClusterSnapshot, now: float) -> Plan:
        """Decide every pending gang of `snapshot` (left unchanged) at time `now`."""
        cfg = self.config
        state = ClusterState.from_snapshot(snapshot)
        workload = cfg.workload or learn_workload(snapshot, cfg.popularity)
        rnd = _Round(
            state=state,
            scorer=cfg.scorer(ScorerContext.of(state, workload)),
            now=now,
            running={g.uid: g for g in snapshot.running},
            ledger=ServiceLedger(snapshot.services),
        )
        order = gang_order(snapshot.pending)
        for priority, level in groupby(order, key=lambda g: g.priority):
            failed: list[Gang] = []
            for gang in level:
                reason = unschedulable_reason(state, gang)
                if reason:
                    rnd.outcomes[gang.uid] = _Outcome(Verdict.UNSCHEDULABLE, reason)
                    continue
                placed = place_gang(state, gang, rnd.scorer, max_domains=cfg.max_domains)
                if placed is None:
                    failed.append(gang)
                    continue
                rnd.outcomes[gang.uid] = _Outcome(
                    Verdict.BOUND, "fits on free capacity", placed[0], placed[1], "greedy"
                )
            if failed:
                self._rescue(rnd, failed, priority, snapshot)
        decisions = tuple(self._decision(g, rnd) for g in order)
        return Plan(decisions, tuple(rnd.evictions), tuple(rnd.moves), tuple(rnd.reports))

    # ---- the slow paths -------------------------------------------------------------------------------

    def _rescue(self, rnd: _Round, failed: list[Gang], priority: int, snapshot: ClusterSnapshot) -> None:
        """Greedy victim search for a class's leftovers, then CP-SAT seeded with it; the better answer wins."""
        cfg = self.config
        heuristic = self._greedy_victims(rnd, failed, snapshot) if cfg.preemption else []
        chosen_exact = False
        if cfg.exact:
            # Roll the greedy answer back (newest first) and hand it to the solver as a starting point.
            for _, _, undos in reversed(heuristic):
                undo_all(undos)
            hint = {g.uid: r.placement for g, r, _ in heuristic}
            victims = {v.uid for _, r, _ in heuristic for v in r.victims}
            prepared = self._exact(rnd, failed, priority, snapshot, hint, victims)
            if prepared is not None:
                result, must, items, by_uid = prepared
                if result.has_solution and _at_least_as_good(result, failed, heuristic):
                    self._apply_exact(rnd, result, must, failed, items, by_uid)
                    chosen_exact = True
                else:
                    for uid, o in must:
                        o.undos = _occupy(rnd.state, by_uid[uid], o.placement)
            if not chosen_exact and cfg.preemption:
                heuristic = self._greedy_victims(rnd, failed, snapshot)
        if not chosen_exact:
            for gang, found, undos in heuristic:
                for v in found.victims:
                    self._evict(rnd, v, gang)
                rnd.outcomes[gang.uid] = _Outcome(
                    Verdict.NOMINATED,
                    f"fits once {len(found.victims)} lower-priority gang(s) are evicted",
                    found.placement,
                    undos,
                    "preemption",
                    tuple(v.uid for v in found.victims),
                )
        for gang in failed:
            if gang.uid not in rnd.outcomes:
                why = f"no room for {gang.gpu_total_milli / GPU_MILLI:g} GPU(s) on eligible nodes"
                if cfg.preemption:
                    why += "; preempting lower-priority gangs would not make enough room"
                rnd.outcomes[gang.uid] = _Outcome(Verdict.WAITING, why)

    def _greedy_victims(
        self, rnd: _Round, failed: list[Gang], snapshot: ClusterSnapshot
    ) -> list[tuple[Gang, PreemptionResult, list[Undo]]]:
        """Cheapest-first victim search per failed gang, in order; applied to the state, nothing recorded yet."""
        out: list[tuple[Gang, PreemptionResult, list[Undo]]] = []
        taken: set[str] = set()
        for gang in failed:
            running = [g for g in rnd.running.values() if g.uid not in taken]
            found = greedy_preemption(
                rnd.state,
                gang,
                running,
                rnd.scorer,
                rnd.ledger,
                snapshot.services,
                rnd.now,
                self.config.costs,
                self.config.max_domains,
            )
            if found is not None:
                out.append((gang, found[0], found[1]))
                taken.update(v.uid for v in found[0].victims)
        return out

    def _exact(
        self,
        rnd: _Round,
        failed: list[Gang],
        priority: int,
        snapshot: ClusterSnapshot,
        hint: dict[str, GangPlacement],
        hint_victims: set[str],
    ) -> tuple[ExactResult, list[tuple[str, _Outcome]], list[RunningItem], dict[str, Gang]] | None:
        """One CP-SAT solve for this class's failed gangs, free to re-place gangs already bound in this plan.

        Leaves the bound gangs released in the state; the caller applies the result or re-occupies them.
        """
        cfg = self.config
        state = rnd.state
        scope = self._scope(rnd, failed, priority, snapshot)
        in_scope = np.zeros(state.size, dtype=np.bool_)
        in_scope[scope] = True
        must = [
            (uid, o)
            for uid, o in rnd.outcomes.items()
            if o.verdict == Verdict.BOUND and o.placement is not None and all(in_scope[r] for r in o.placement.rows)
        ]
        by_uid = {g.uid: g for g in snapshot.pending}
        items = [
            RunningItem(
                gang=g,
                evictable=cfg.preemption and may_preempt(g, priority, snapshot.services),
                movable=cfg.allow_moves and g.movable and not g.terminating,
                work_lost_s=work_lost_s(g, rnd.now, cfg.costs),
                hint_evicted=g.uid in hint_victims,
            )
            for g in rnd.running.values()
            if any(in_scope[state.row[pl.node]] for pl in g.placements)
        ]
        items = [it for it in items if it.evictable or it.movable]
        if not items and not must:
            return None
        pending = [PendingItem(by_uid[uid], True, o.placement) for uid, o in must]
        pending += [PendingItem(g, hint=hint.get(g.uid)) for g in failed]
        # The model re-places the gangs this plan already bound, so free their resources while it runs.
        for _, o in must:
            undo_all(o.undos)
        result = solve(state, pending, items, scope, rnd.ledger.left, cfg.exact_config, self.clock)
        rnd.reports.append(result.report)
        return result, must, items, by_uid

    def _apply_exact(
        self,
        rnd: _Round,
        result: ExactResult,
        must: list[tuple[str, _Outcome]],
        failed: list[Gang],
        items: list[RunningItem],
        by_uid: dict[str, Gang],
    ) -> None:
        state = rnd.state
        item_of = {it.gang.uid: it.gang for it in items}
        newly = [g for g in failed if g.uid in result.placed]
        disturbed: dict[int, list[str]] = {}
        for uid in result.evicted:
            victim = item_of[uid]
            for pl in victim.placements:
                disturbed.setdefault(state.row[pl.node], []).append(uid)
            release_gang(state, victim)
            rnd.ledger.take(victim)
            self._evict(rnd, victim, _preemptor(state, victim, newly, result) or failed[0])
        moving = sorted(result.moved.items())
        # Every mover leaves before any lands: the solver's answer may chain moves (a goes where b was).
        for uid, _ in moving:
            release_gang(state, item_of[uid])
            rnd.ledger.take(item_of[uid])
        for uid, placement in moving:
            gang = item_of[uid]
            for pod, pl, row, gpus in zip(gang.pods, gang.placements, placement.rows, placement.gpus, strict=True):
                disturbed.setdefault(state.row[pl.node], []).append(uid)
                state.allocate(row, pod, gpus)
                if state.row[pl.node] != row or tuple(pl.gpu_indices) != tuple(gpus):
                    rnd.moves.append(Move(uid, pod.name, pl.node, state.names[row], tuple(gpus)))
            rnd.running[uid] = _moved(gang, placement, state)
        for uid, o in must:
            o.placement = result.placed[uid]
            o.undos = _occupy(state, by_uid[uid], o.placement)
        for pg in newly:
            spot = result.placed[pg.uid]
            undos = _occupy(state, pg, spot)
            waits = sorted({u for r in spot.rows for u in disturbed.get(r, [])})
            victims = tuple(u for u in waits if u in result.evicted)
            if waits:
                reason = f"fits once {len(victims)} eviction(s) and {len(waits) - len(victims)} move(s) complete"
                rnd.outcomes[pg.uid] = _Outcome(Verdict.NOMINATED, reason, spot, undos, "exact", victims)
            else:
                rnd.outcomes[pg.uid] = _Outcome(Verdict.BOUND, "fits after repacking", spot, undos, "exact")

    def _scope(self, rnd: _Round, failed: list[Gang], priority: int, snapshot: ClusterSnapshot) -> np.ndarray:
        """All nodes on small clusters; otherwise the eligible nodes with the most GPU that could be freed.

        Ordering: (1) reclaimable GPU of the node's topology domain (when the first failed gang asks for one),
        (2) reclaimable GPU of the node (free plus held by gangs that could be evicted or moved), (3) node name.
        """
        state = rnd.state
        limit = self.config.exact_config.max_nodes
        if state.size <= limit:
            return np.arange(state.size)
        eligible = np.zeros(state.size, dtype=np.bool_)
        for fg in failed:
            eligible |= state.static_mask(fg)
        potential = state.gpu_free.sum(axis=1).astype(np.float64)
        for rg in rnd.running.values():
            if may_preempt(rg, priority, snapshot.services) or (self.config.allow_moves and rg.movable):
                for pod, pl in zip(rg.pods, rg.placements, strict=True):
                    potential[state.row[pl.node]] += pod.gpu_total_milli
        rows = np.flatnonzero(eligible)
        key = failed[0].topology_key
        if key and len(failed[0].pods) > 1:
            codes, names = state.domains(key)
            dom = np.bincount(codes[codes >= 0], weights=potential[codes >= 0], minlength=max(len(names), 1))
            dom_pot = np.where(codes >= 0, dom[np.maximum(codes, 0)], -1.0)
            order = np.lexsort((rows, -potential[rows], -dom_pot[rows]))
        else:
            order = np.lexsort((rows, -potential[rows]))
        return np.sort(rows[order][:limit])

    def _evict(self, rnd: _Round, victim: RunningGang, preemptor: Gang) -> None:
        """Record an eviction; the caller has already released the victim in the state and charged the ledger."""
        if victim.uid not in rnd.running:
            return
        if not any(e.gang == victim.uid for e in rnd.evictions):
            lost = work_lost_s(victim, rnd.now, self.config.costs)
            rnd.evictions.append(
                Eviction(
                    gang=victim.uid,
                    preemptor=preemptor.uid,
                    priority=victim.priority,
                    checkpoint_first=victim.kind == GangKind.FINETUNE and victim.preemptible,
                    work_lost_s=lost,
                    reason=f"preempted by {preemptor.uid} (priority {preemptor.priority} > {victim.priority})",
                )
            )
        del rnd.running[victim.uid]

    def _decision(self, gang: Gang, rnd: _Round) -> GangDecision:
        o = rnd.outcomes[gang.uid]
        bindings: tuple[Binding, ...] = ()
        if o.placement is not None:
            bindings = tuple(
                Binding(gang.uid, pod.name, rnd.state.names[r], tuple(g))
                for pod, r, g in zip(gang.pods, o.placement.rows, o.placement.gpus, strict=True)
            )
        return GangDecision(gang.uid, o.verdict, o.reason, bindings, o.victims, o.path)


def _at_least_as_good(
    result: ExactResult, failed: list[Gang], heuristic: list[tuple[Gang, PreemptionResult, list[Undo]]]
) -> bool:
    """Whether the solver's answer places at least the GPUs the greedy search did, with no more evictions on a tie.

    All failed gangs share one priority class, so GPUs placed is the whole of the primary objective.
    """
    exact_gpu = sum(g.gpu_total_milli + 1 for g in failed if g.uid in result.placed)
    greedy_gpu = sum(g.gpu_total_milli + 1 for g, _, _ in heuristic)
    if exact_gpu != greedy_gpu:
        return exact_gpu > greedy_gpu
    return len(result.evicted) <= sum(len(r.victims) for _, r, _ in heuristic)


def learn_workload(snapshot: ClusterSnapshot, popularity: float = 0.99) -> TargetWorkload:
    """The target workload implied by the pods the snapshot holds (running and pending)."""
    samples = [WorkloadShape.of(p, g.gpu_products) for g in snapshot.running for p in g.pods]
    samples += [WorkloadShape.of(p, g.gpu_products) for g in snapshot.pending for p in g.pods]
    return TargetWorkload.from_samples(samples or _FALLBACK_SHAPES, popularity)


def _occupy(state: ClusterState, gang: Gang, placement: GangPlacement | None) -> list[Undo]:
    if placement is None:
        return []
    return [state.allocate(r, pod, g) for pod, r, g in zip(gang.pods, placement.rows, placement.gpus, strict=True)]


def _moved(gang: RunningGang, placement: GangPlacement, state: ClusterState) -> RunningGang:
    pls = tuple(
        Placement(pod.name, state.names[r], tuple(g))
        for pod, r, g in zip(gang.pods, placement.rows, placement.gpus, strict=True)
    )
    return replace(gang, placements=pls)


def _preemptor(state: ClusterState, victim: RunningGang, newly: list[Gang], result: ExactResult) -> Gang | None:
    """The newly placed gang that lands on one of the victim's nodes, highest priority first."""
    rows = {state.row[pl.node] for pl in victim.placements}
    for gang in sorted(newly, key=lambda g: (-g.priority, g.uid)):
        if rows & set(result.placed[gang.uid].rows):
            return gang
    return None
