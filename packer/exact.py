"""The exact path: a CP-SAT model that places pending gangs by priority, evicting and moving as little as it can.

Scope: a set of nodes (all of them on small clusters); running gangs on those nodes may stay, be evicted (when the
caller allows it) or move within the scope (when movable). Pending gangs are placed whole or not at all, on the GPUs
of the scope, honouring GPU shares, products, affinity, taints and topology domains.

Objective, lexicographic through integer weights: (1) priority-weighted GPUs placed, higher classes strictly first;
then (2) the fewest and cheapest evictions (lower priority tier and less work lost first) and moves.
The solver runs within a wall-clock budget and reports whether its answer is proven optimal.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from packer.greedy import GangPlacement
from packer.plan import SolverReport, SolverStatus
from packer.snapshot import GPU_MILLI, Gang, GangKind, PodRequest, RunningGang
from packer.state import ClusterState

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ExactConfig:
    """Budget and cost weights of the exact path."""

    time_budget_s: float = 1.0  # wall-clock limit of one solve
    workers: int = 2  # CP-SAT search workers
    max_nodes: int = 128  # scope size; larger clusters are cut down to the most promising nodes
    eviction_cost: int = 1000  # per evicted gang and priority tier (lowest victim priority = tier 1)
    move_cost: int = 100  # per moved pod
    seed: int = 0  # CP-SAT random seed, for reproducible runs

    def __post_init__(self) -> None:
        if self.time_budget_s <= 0 or self.workers < 1 or self.max_nodes < 1:
            raise ValueError("time budget, workers and max_nodes must be positive")
        if self.eviction_cost < 2 or self.move_cost < 1:
            raise ValueError("eviction_cost must be >= 2 and move_cost >= 1")


@dataclass(frozen=True)
class PendingItem:
    """A gang the model may place; `must_place` keeps an already planned gang placed (anywhere in scope)."""

    gang: Gang
    must_place: bool = False
    hint: GangPlacement | None = None  # a known feasible placement (required when must_place)


@dataclass(frozen=True)
class RunningItem:
    """A running gang the model may evict or move; its pods stay put unless the model says otherwise."""

    gang: RunningGang
    evictable: bool
    movable: bool
    work_lost_s: float = 0.0
    hint_evicted: bool = False  # part of the known feasible answer handed to the solver


@dataclass(frozen=True)
class ExactResult:
    """The solver's answer, empty when it found no solution."""

    report: SolverReport
    placed: dict[str, GangPlacement] = field(default_factory=dict)  # pending gang uid -> placement
    evicted: tuple[str, ...] = ()
    moved: dict[str, GangPlacement] = field(default_factory=dict)  # running gang uid -> new placement

    @property
    def has_solution(self) -> bool:
        """Whether the solver returned any assignment."""
        return self.report.status in (SolverStatus.OPTIMAL, SolverStatus.FEASIBLE)


@dataclass
class _Placeable:
    """One pod the model may place: a pending gang's pod or a moving running pod."""

    owner: int  # index into the owner list (pending first, then running)
    pod: PodRequest
    active: Any  # literal: the gang is placed / the running gang moves
    y: dict[int, Any] = field(default_factory=dict)  # scope position -> bool var
    z: dict[tuple[int, int], Any] = field(default_factory=dict)  # (scope position, gpu) -> bool var (shares)


def solve(
    state: ClusterState,
    pending: Sequence[PendingItem],
    running: Sequence[RunningItem],
    scope: IntArray,
    service_left: Mapping[str, int],
    cfg: ExactConfig,
    clock: Callable[[], float] | None = None,
) -> ExactResult:
    """Build and solve the model over `scope` rows of `state` (which it does not change).

    With an injected monotonic `clock`, model building counts against the budget too; without one the budget
    bounds the solver alone (the core never reads the wall clock itself).
    """
    # Heavy, and only the exact path needs it; imported before the clock starts, since a first import under load
    # can take longer than the whole budget and would leave the solver no time at all.
    from ortools.sat.python import cp_model

    started = clock() if clock is not None else 0.0

    model = cp_model.CpModel()
    rows = [int(r) for r in sorted(set(int(x) for x in scope))]
    pos = {r: s for s, r in enumerate(rows)}
    ngpu = [int(state.gpu_count[r]) for r in rows]
    free = [state.gpu_free[r, : ngpu[s]].astype(int).tolist() for s, r in enumerate(rows)]
    cpu_free = [int(state.cpu_free[r]) for r in rows]
    mem_free = [int(state.mem_free[r]) for r in rows]

    # Usage of in-model running gangs on scope nodes: released when the gang is evicted or moved.
    keep: list[Any] = []
    evict: list[Any | None] = []
    move: list[Any | None] = []
    rel_gpu: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    rel_cpu: dict[int, list[tuple[int, int]]] = defaultdict(list)
    rel_mem: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for k, item in enumerate(running):
        g = item.gang
        inside = all(state.row[pl.node] in pos for pl in g.placements)
        keep.append(model.new_bool_var(f"keep_{k}"))
        evict.append(model.new_bool_var(f"evict_{k}") if item.evictable else None)
        move.append(model.new_bool_var(f"move_{k}") if item.movable and inside else None)
        model.add(keep[k] + sum(v for v in (evict[k], move[k]) if v is not None) == 1)
        for pod, pl in zip(g.pods, g.placements, strict=True):
            s = pos.get(state.row[pl.node])
            if s is None:
                continue
            rel_cpu[s].append((k, pod.cpu_milli))
            rel_mem[s].append((k, pod.mem_mib))
            for i in pl.gpu_indices:
                rel_gpu[(s, i)].append((k, pod.gpu_milli))

    max_free = [
        [free[s][i] + sum(m for _, m in rel_gpu.get((s, i), ())) for i in range(ngpu[s])] for s in range(len(rows))
    ]
    max_cpu = [cpu_free[s] + sum(c for _, c in rel_cpu.get(s, ())) for s in range(len(rows))]
    max_mem = [mem_free[s] + sum(c for _, c in rel_mem.get(s, ())) for s in range(len(rows))]

    # Placeable pods: pending gangs' pods, then pods of running gangs that may move.
    x: list[Any] = []
    owners: list[tuple[Gang | RunningGang, Any]] = []
    for j, pitem in enumerate(pending):
        lit = model.new_bool_var(f"place_{j}")
        if pitem.must_place:
            model.add(lit == 1)
        x.append(lit)
        owners.append((pitem.gang, lit))
    for k, ritem in enumerate(running):
        if move[k] is not None:
            owners.append((ritem.gang, move[k]))
    placeables: list[_Placeable] = []
    for o, (owner, lit) in enumerate(owners):
        mask = state.static_mask(owner)
        codes = None
        if owner.topology_key and len(owner.pods) > 1:
            codes, _ = state.domains(owner.topology_key)
        domain_vars: dict[int, Any] = {}
        for pod in owner.pods:
            p = _Placeable(o, pod, lit)
            for s, r in enumerate(rows):
                if not mask[r] or (codes is not None and codes[r] < 0):
                    continue
                if max_cpu[s] < pod.cpu_milli or max_mem[s] < pod.mem_mib:
                    continue
                if pod.gpu_count and sum(f >= pod.gpu_milli for f in max_free[s]) < pod.gpu_count:
                    continue
                y = model.new_bool_var(f"y_{o}_{pod.name}_{s}")
                p.y[s] = y
                if pod.is_share:
                    zs = []
                    for i in range(ngpu[s]):
                        if max_free[s][i] >= pod.gpu_milli:
                            z = model.new_bool_var(f"z_{o}_{pod.name}_{s}_{i}")
                            p.z[(s, i)] = z
                            zs.append(z)
                    model.add(sum(zs) == y)
                if codes is not None:
                    d = int(codes[r])
                    if d not in domain_vars:
                        domain_vars[d] = model.new_bool_var(f"dom_{o}_{d}")
                    model.add_implication(y, domain_vars[d])
            model.add(sum(p.y.values()) == lit)
            placeables.append(p)
        if domain_vars:
            model.add(sum(domain_vars.values()) == lit)
        elif codes is not None:
            model.add(lit == 0)

    # Hints name GPUs; symmetry breaking must leave those GPUs alone or it would contradict the hint.
    hinted = _hint_map(pending, pos)
    touched = {(s, i) for s, gpus in hinted.values() for i in gpus}

    # Capacity per node and GPU.
    by_node: dict[int, list[_Placeable]] = defaultdict(list)
    for p in placeables:
        for s in p.y:
            by_node[s].append(p)
    whole: dict[tuple[int, int], Any] = {}
    for s, ps in by_node.items():
        cpu_terms = [p.pod.cpu_milli * p.y[s] for p in ps if p.pod.cpu_milli]
        mem_terms = [p.pod.mem_mib * p.y[s] for p in ps if p.pod.mem_mib]
        _capacity(model, cpu_terms, rel_cpu.get(s, []), keep, cpu_free[s])
        _capacity(model, mem_terms, rel_mem.get(s, []), keep, mem_free[s])
        whole_pods = [p for p in ps if p.pod.gpu_count and not p.pod.is_share]
        if whole_pods:
            ws = []
            prev_clean = None
            for i in range(ngpu[s]):
                if max_free[s][i] >= GPU_MILLI:
                    w = model.new_bool_var(f"w_{s}_{i}")
                    whole[(s, i)] = w
                    ws.append(w)
                    # Identical untouched GPUs are interchangeable: fill them in index order.
                    clean = free[s][i] == GPU_MILLI and (s, i) not in rel_gpu and (s, i) not in touched
                    if clean and prev_clean is not None:
                        model.add(prev_clean >= w)
                    prev_clean = w if clean else prev_clean
            model.add(sum(p.pod.gpu_count * p.y[s] for p in whole_pods) == sum(ws))
        for i in range(ngpu[s]):
            terms = [p.pod.gpu_milli * p.z[(s, i)] for p in ps if (s, i) in p.z]
            if (s, i) in whole:
                terms.append(GPU_MILLI * whole[(s, i)])
            if terms:
                _capacity(model, terms, rel_gpu.get((s, i), []), keep, free[s][i])

    # Service disruption budgets count evictions and moves alike.
    per_service: dict[str, list[Any]] = defaultdict(list)
    for k, item in enumerate(running):
        if item.gang.kind == GangKind.SERVING:
            per_service[item.gang.service].extend(v for v in (evict[k], move[k]) if v is not None)
    for svc, lits in per_service.items():
        if lits:
            model.add(sum(lits) <= max(0, service_left.get(svc, 0)))

    model.maximize(_objective(pending, running, x, evict, move, cfg))
    _hint(model, pending, running, placeables, x, keep, evict, move, whole, hinted)

    solver = cp_model.CpSolver()
    left = cfg.time_budget_s - (clock() - started if clock is not None else 0.0)
    solver.parameters.max_time_in_seconds = max(left, 0.01)
    solver.parameters.num_workers = cfg.workers
    solver.parameters.random_seed = cfg.seed
    code = solver.solve(model)
    status = {
        cp_model.OPTIMAL: SolverStatus.OPTIMAL,
        cp_model.FEASIBLE: SolverStatus.FEASIBLE,
        cp_model.INFEASIBLE: SolverStatus.INFEASIBLE,
    }.get(code, SolverStatus.UNKNOWN)
    if code == cp_model.MODEL_INVALID:
        raise RuntimeError(f"CP-SAT rejected the packing model: {model.validate()}")
    has = status in (SolverStatus.OPTIMAL, SolverStatus.FEASIBLE)
    report = SolverReport(
        status=status,
        objective=float(solver.objective_value) if has else 0.0,
        best_bound=float(solver.best_objective_bound) if has else 0.0,
        solve_s=float(solver.wall_time),
        scope_nodes=len(rows),
        variables=len(model.proto.variables),
        gangs=tuple(item.gang.uid for item in pending),
    )
    if not has:
        return ExactResult(report)
    return _extract(solver, report, pending, running, owners, placeables, whole, rows, evict, move)


def _hint_map(
    pending: Sequence[PendingItem], pos: dict[int, int]
) -> dict[tuple[int, str], tuple[int, tuple[int, ...]]]:
    """(pending index, pod name) -> (scope position, GPUs) for every hint that lies inside the scope."""
    hinted: dict[tuple[int, str], tuple[int, tuple[int, ...]]] = {}
    for j, item in enumerate(pending):
        h = item.hint
        if h is None or not all(r in pos for r in h.rows):
            continue
        for pod, r, g in zip(item.gang.pods, h.rows, h.gpus, strict=True):
            hinted[(j, pod.name)] = (pos[r], g)
    return hinted


def _capacity(model: Any, new_terms: list[Any], released: list[tuple[int, int]], keep: list[Any], free: int) -> None:
    """New usage + kept running usage <= free now + everything those running pods hold."""
    if not new_terms:
        return
    held = sum(amount for _, amount in released)
    kept = [amount * keep[k] for k, amount in released]
    model.add(sum(new_terms) + sum(kept) <= free + held)


def _objective(
    pending: Sequence[PendingItem],
    running: Sequence[RunningItem],
    x: list[Any],
    evict: list[Any | None],
    move: list[Any | None],
    cfg: ExactConfig,
) -> Any:
    """BIG * (priority-weighted tenths of GPUs placed) - eviction and move costs."""
    units = [max(1, math.ceil(item.gang.gpu_total_milli / 100)) for item in pending]
    classes = sorted({item.gang.priority for item in pending})
    class_weight: dict[int, int] = {}
    lower = 0  # sum over lower classes of weight * units
    for prio in classes:
        w = lower + 1  # one unit of this class outweighs every unit of all lower classes together
        class_weight[prio] = w
        lower += w * sum(u for item, u in zip(pending, units, strict=True) if item.gang.priority == prio)
    victim_prios = sorted({item.gang.priority for item in running if item.evictable})
    tier = {prio: t + 1 for t, prio in enumerate(victim_prios)}
    costs: list[tuple[Any, int]] = []
    for k, item in enumerate(running):
        e, m = evict[k], move[k]
        if e is not None:
            gpu_minutes = item.work_lost_s / 60.0 * max(item.gang.gpu_total_milli / GPU_MILLI, 1.0)
            lost = min(round(gpu_minutes), cfg.eviction_cost - 1)
            costs.append((e, cfg.eviction_cost * tier[item.gang.priority] + lost))
        if m is not None:
            costs.append((m, cfg.move_cost * len(item.gang.pods)))
    big = 1 + sum(c for _, c in costs)
    gain = [class_weight[item.gang.priority] * u for item, u in zip(pending, units, strict=True)]
    if big * (sum(gain) + 1) >= 2**62:
        raise ValueError("packing objective would overflow 64-bit integers; reduce the model scope")
    placed = sum(g * lit for g, lit, item in zip(gain, x, pending, strict=True) if not item.must_place)
    return big * placed - sum(c * lit for lit, c in costs)


def _hint(
    model: Any,
    pending: Sequence[PendingItem],
    running: Sequence[RunningItem],
    placeables: list[_Placeable],
    x: list[Any],
    keep: list[Any],
    evict: list[Any | None],
    move: list[Any | None],
    whole: dict[tuple[int, int], Any],
    hinted: dict[tuple[int, str], tuple[int, tuple[int, ...]]],
) -> None:
    """Start from the known feasible state: running gangs stay, hinted pending gangs sit where the hint says."""
    for k, ritem in enumerate(running):
        gone = ritem.hint_evicted and evict[k] is not None
        model.add_hint(keep[k], 0 if gone else 1)
        if evict[k] is not None:
            model.add_hint(evict[k], 1 if gone else 0)
        if move[k] is not None:
            model.add_hint(move[k], 0)
    hinted_owner = {j for j, _ in hinted}
    for j, item in enumerate(pending):
        if not item.must_place:
            model.add_hint(x[j], 1 if j in hinted_owner else 0)
    used_whole: set[tuple[int, int]] = set()
    for p in placeables:
        where = hinted.get((p.owner, p.pod.name)) if p.owner < len(pending) else None
        for s, y in p.y.items():
            model.add_hint(y, 1 if where is not None and where[0] == s else 0)
        for (s, i), z in p.z.items():
            model.add_hint(z, 1 if where is not None and where[0] == s and i in where[1] else 0)
        if where is not None and p.pod.gpu_count and not p.pod.is_share:
            used_whole.update((where[0], i) for i in where[1])
    for key, w in whole.items():
        model.add_hint(w, 1 if key in used_whole else 0)


def _extract(
    solver: Any,
    report: SolverReport,
    pending: Sequence[PendingItem],
    running: Sequence[RunningItem],
    owners: list[tuple[Gang | RunningGang, Any]],
    placeables: list[_Placeable],
    whole: dict[tuple[int, int], Any],
    rows: list[int],
    evict: list[Any | None],
    move: list[Any | None],
) -> ExactResult:
    """Read placements back: each pod's node, its GPU for a share, and whole GPUs handed out in index order."""
    free_whole: dict[int, list[int]] = defaultdict(list)
    for (s, i), w in sorted(whole.items()):
        if solver.boolean_value(w):
            free_whole[s].append(i)
    where: dict[tuple[int, str], tuple[int, tuple[int, ...]]] = {}
    # Whole-GPU pods on a node take the chosen GPUs in (owner, pod name) order, deterministically.
    for p in sorted(placeables, key=lambda p: (p.owner, p.pod.name)):
        if not solver.boolean_value(p.active):
            continue
        chosen = next((s for s, y in p.y.items() if solver.boolean_value(y)), None)
        if chosen is None:
            continue
        s = chosen
        if p.pod.is_share:
            gpus: tuple[int, ...] = tuple(i for (ss, i), z in p.z.items() if ss == s and solver.boolean_value(z))
        elif p.pod.gpu_count:
            gpus = tuple(free_whole[s][: p.pod.gpu_count])
            free_whole[s] = free_whole[s][p.pod.gpu_count :]
        else:
            gpus = ()
        where[(p.owner, p.pod.name)] = (rows[s], gpus)
    placed: dict[str, GangPlacement] = {}
    moved: dict[str, GangPlacement] = {}
    for o, (g, lit) in enumerate(owners):
        if not solver.boolean_value(lit):
            continue
        spots = [where[(o, pod.name)] for pod in g.pods]
        placement = GangPlacement(tuple(r for r, _ in spots), tuple(gp for _, gp in spots))
        if o < len(pending):
            placed[g.uid] = placement
        else:
            moved[g.uid] = placement
    evicted = tuple(
        item.gang.uid for k, item in enumerate(running) if evict[k] is not None and solver.boolean_value(evict[k])
    )
    return ExactResult(report, placed, evicted, moved)
