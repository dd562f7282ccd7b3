"""Who may be preempted, what it costs, and the greedy victim search used when the exact path has no answer.

Rules: whole gangs only; a victim always has strictly lower priority than its preemptor; a fine-tuning gang only
when it is preemptible; a serving replica only while its service keeps minReplicas and its PodDisruptionBudget
allows one more disruption; a gang already terminating is never chosen again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from packer.greedy import GangPlacement, place_pod, pod_order
from packer.scoring import Scorer
from packer.snapshot import Gang, GangKind, PodRequest, RunningGang, ServiceBudget
from packer.state import ClusterState, Undo, undo_all


@dataclass(frozen=True)
class CostModel:
    """How much work an eviction loses."""

    serving_eviction_cost_s: float = 600.0  # a serving replica loses no progress but costs a cold start


def work_lost_s(gang: RunningGang, now: float, cost: CostModel) -> float:
    """Seconds of progress an eviction throws away (fine-tuning: since the last checkpoint)."""
    if gang.kind == GangKind.SERVING:
        return cost.serving_eviction_cost_s
    since = gang.last_checkpoint_s if gang.last_checkpoint_s is not None else gang.started_s
    return max(0.0, now - since)


def may_preempt(victim: RunningGang, preemptor_priority: int, budgets: Mapping[str, ServiceBudget]) -> bool:
    """Whether `victim` may ever be evicted for a gang of `preemptor_priority` (budgets are checked per plan)."""
    if victim.terminating or victim.priority >= preemptor_priority:
        return False
    if victim.kind == GangKind.SERVING:
        budget = budgets.get(victim.service)
        return budget is not None and budget.allowed > 0
    return victim.preemptible


def victim_order(victims: Sequence[RunningGang], now: float, cost: CostModel) -> list[RunningGang]:
    """Victims, cheapest first.

    Ordering: (1) priority ascending, (2) work lost ascending, (3) uid — so the lowest priority and the least
    progress go first, and equal candidates are always taken in the same order.
    """
    return sorted(victims, key=lambda v: (v.priority, work_lost_s(v, now, cost), v.uid))


class ServiceLedger:
    """Disruptions still allowed per service within one plan."""

    def __init__(self, budgets: Mapping[str, ServiceBudget]) -> None:
        self.left: dict[str, int] = {name: b.allowed for name, b in budgets.items()}

    def can_take(self, gang: RunningGang) -> bool:
        """Whether evicting or moving `gang` stays within its service's budget."""
        return gang.kind != GangKind.SERVING or self.left.get(gang.service, 0) > 0

    def take(self, gang: RunningGang) -> Undo:
        """Spend one disruption of `gang`'s service (no-op for non-serving gangs)."""
        if gang.kind != GangKind.SERVING:
            return lambda: None
        if self.left.get(gang.service, 0) <= 0:
            raise ValueError(f"service {gang.service} has no disruption left")
        self.left[gang.service] -= 1

        def undo() -> None:
            self.left[gang.service] += 1

        return undo

    def refund(self, gang: RunningGang) -> Undo:
        """Give back a disruption taken for `gang` (a reprieved victim)."""
        if gang.kind != GangKind.SERVING:
            return lambda: None
        self.left[gang.service] += 1

        def undo() -> None:
            self.left[gang.service] -= 1

        return undo


def release_gang(state: ClusterState, gang: RunningGang) -> list[Undo]:
    """Give back every pod of a running gang in `state`; returns the undos."""
    return [
        state.release(state.row[pl.node], pod, pl.gpu_indices)
        for pod, pl in zip(gang.pods, gang.placements, strict=True)
    ]


@dataclass(frozen=True)
class PreemptionResult:
    """A greedy preemption: the victims (cheapest first) and where the preemptor goes once they are gone."""

    victims: tuple[RunningGang, ...]
    placement: GangPlacement


def greedy_preemption(
    state: ClusterState,
    gang: Gang,
    running: Sequence[RunningGang],
    scorer: Scorer,
    ledger: ServiceLedger,
    budgets: Mapping[str, ServiceBudget],
    now: float,
    cost: CostModel,
    max_domains: int = 32,
) -> tuple[PreemptionResult, list[Undo]] | None:
    """kube-scheduler-style preemption for a whole gang: pod by pod, the node whose eviction set is cheapest.

    For each pod (largest first) a node with room is taken as the greedy path would; otherwise every eligible node
    is costed by the cheapest-first prefix of its victims that makes room (after reprieving the ones not needed),
    and the node with the lowest key wins. Topology-constrained gangs try each domain and keep the cheapest.
    On success the victims are released, the gang allocated and the ledger charged; the undos revert all of it.
    On failure nothing has changed.
    """
    eligible = state.static_mask(gang)
    candidates = [
        v
        for v in running
        if may_preempt(v, gang.priority, budgets) and any(eligible[state.row[pl.node]] for pl in v.placements)
    ]
    if not candidates:
        return None
    lost = {v.uid: work_lost_s(v, now, cost) for v in candidates}
    on_row: dict[int, list[RunningGang]] = {}
    for v in victim_order(candidates, now, cost):
        for row in sorted({state.row[pl.node] for pl in v.placements}):
            on_row.setdefault(row, []).append(v)
    masks: list[npt.NDArray[np.bool_]] = [eligible]
    if gang.topology_key and len(gang.pods) > 1:
        codes, names = state.domains(gang.topology_key)
        masks = [eligible & (codes == d) for d in range(len(names)) if bool((eligible & (codes == d)).any())]
    best: tuple[tuple[float, ...], int] | None = None
    for m, mask in enumerate(masks[:max_domains]):
        attempt = _preempt_within(state, gang, mask, on_row, lost, scorer, ledger)
        if attempt is None:
            continue
        result, undos = attempt
        key = _victims_key(result.victims, lost)
        undo_all(undos)
        if best is None or key < best[0]:
            best = (key, m)
    if best is None:
        return None
    return _preempt_within(state, gang, masks[best[1]], on_row, lost, scorer, ledger)


def _victims_key(victims: Sequence[RunningGang], lost: Mapping[str, float]) -> tuple[float, ...]:
    """Cost of an eviction set, lower first: (1) highest victim priority, (2) number of victims, (3) total work
    lost. Callers scan candidates in row (node name) or domain order and keep the first of equal keys."""
    if not victims:
        return (float("-inf"), 0.0, 0.0)
    return (float(max(v.priority for v in victims)), float(len(victims)), sum(lost[v.uid] for v in victims))


def _preempt_within(
    state: ClusterState,
    gang: Gang,
    mask: npt.NDArray[np.bool_],
    on_row: Mapping[int, list[RunningGang]],
    lost: Mapping[str, float],
    scorer: Scorer,
    ledger: ServiceLedger,
) -> tuple[PreemptionResult, list[Undo]] | None:
    undos: list[Undo] = []
    victims: list[RunningGang] = []
    gone: set[str] = set()
    rows = [0] * len(gang.pods)
    gpus: list[tuple[int, ...]] = [()] * len(gang.pods)
    for i in pod_order(gang.pods):
        pod = gang.pods[i]
        spot = place_pod(state, pod, mask, scorer)
        if spot is None:
            choice = _cheapest_node(state, pod, mask, on_row, lost, ledger, gone)
            if choice is None:
                undo_all(undos)
                return None
            row, chosen = choice
            for v in chosen:
                undos.append(ledger.take(v))
                undos.extend(release_gang(state, v))
                gone.add(v.uid)
                victims.append(v)
            spot = (row, state.pick_gpus(row, pod))
        rows[i], gpus[i] = spot
        undos.append(state.allocate(spot[0], pod, spot[1]))
    return PreemptionResult(tuple(victims), GangPlacement(tuple(rows), tuple(gpus))), undos


def _cheapest_node(
    state: ClusterState,
    pod: PodRequest,
    mask: npt.NDArray[np.bool_],
    on_row: Mapping[int, list[RunningGang]],
    lost: Mapping[str, float],
    ledger: ServiceLedger,
    gone: set[str],
) -> tuple[int, list[RunningGang]] | None:
    """The node whose cheapest sufficient eviction set is cheapest, with that set (already reprieved)."""
    best: tuple[tuple[float, ...], int, list[RunningGang]] | None = None
    for row in sorted(r for r in on_row if mask[r]):
        free = [int(x) for x in state.gpu_free[row, : state.gpu_count[row]]]
        cpu, mem = int(state.cpu_free[row]), int(state.mem_free[row])
        node = state.names[row]
        budget = dict(ledger.left)
        taken: list[RunningGang] = []
        for v in on_row[row]:
            if v.uid in gone or (v.kind == GangKind.SERVING and budget.get(v.service, 0) <= 0):
                continue
            if v.kind == GangKind.SERVING:
                budget[v.service] -= 1
            taken.append(v)
            cpu, mem = _give_back(v, node, free, cpu, mem, +1)
            if _fits(pod, free, cpu, mem):
                break
        else:
            continue
        # Reprieve on this node: most valuable first, keep whoever is not needed.
        for v in reversed(taken[:-1]):
            cpu2, mem2 = _give_back(v, node, free, cpu, mem, -1)
            if _fits(pod, free, cpu2, mem2):
                cpu, mem = cpu2, mem2
                taken.remove(v)
            else:
                _give_back(v, node, free, cpu2, mem2, +1)
        key = _victims_key(taken, lost)
        if best is None or key < best[0]:
            best = (key, row, taken)
    return None if best is None else (best[1], best[2])


def _give_back(v: RunningGang, node: str, free: list[int], cpu: int, mem: int, sign: int) -> tuple[int, int]:
    """Add (+1) or take again (-1) what victim `v` holds on `node`, in place on `free`; returns new CPU, memory."""
    for p, pl in zip(v.pods, v.placements, strict=True):
        if pl.node == node:
            for g in pl.gpu_indices:
                free[g] += sign * p.gpu_milli
            cpu += sign * p.cpu_milli
            mem += sign * p.mem_mib
    return cpu, mem


def _fits(pod: PodRequest, free: list[int], cpu: int, mem: int) -> bool:
    if cpu < pod.cpu_milli or mem < pod.mem_mib:
        return False
    return not pod.gpu_count or sum(f >= pod.gpu_milli for f in free) >= pod.gpu_count
