"""What the packer decided: bindings, evictions (checkpoint first where possible), moves, solver reports.

A `Plan` is data only; the Kubernetes shell applies it (bind, annotate for checkpoint, evict) and the simulator
replays it. Every gang in the snapshot's pending list gets exactly one `GangDecision`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    """The outcome for one pending gang."""

    BOUND = "bound"  # fits on free capacity now: bind every pod
    NOMINATED = "nominated"  # fits once the listed victims are gone: bind after their eviction completes
    WAITING = "waiting"  # cannot fit now, may fit later (capacity frees up)
    UNSCHEDULABLE = "unschedulable"  # can never fit on this cluster as it is built; no preemption is attempted


class SolverStatus(StrEnum):
    """CP-SAT's verdict on one exact solve, in the words users see."""

    OPTIMAL = "optimal"  # proven best within the model's scope
    FEASIBLE = "feasible"  # a solution, not proven best when the budget ran out
    INFEASIBLE = "infeasible"  # proven that nothing better than the current state exists
    UNKNOWN = "unknown"  # budget ran out before any solution


@dataclass(frozen=True)
class Binding:
    """Bind one pod to a node and the GPU indices it gets there."""

    gang: str
    pod: str
    node: str
    gpu_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class Eviction:
    """Evict a whole running gang to make room for a higher-priority one."""

    gang: str
    preemptor: str  # the pending gang it makes room for
    priority: int
    checkpoint_first: bool  # fine-tuning: ask for a checkpoint and evict once confirmed or past the deadline
    work_lost_s: float  # seconds of progress at risk (since the last checkpoint) or the serving eviction cost
    reason: str


@dataclass(frozen=True)
class Move:
    """Restart one pod of a running gang on another node (repacking)."""

    gang: str
    pod: str
    from_node: str
    to_node: str
    gpu_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class SolverReport:
    """One CP-SAT run: its status, objective, and the size of what it solved."""

    status: SolverStatus
    objective: float
    best_bound: float
    solve_s: float  # as reported by the solver itself
    scope_nodes: int
    variables: int
    gangs: tuple[str, ...]  # pending gangs in the model


@dataclass(frozen=True)
class GangDecision:
    """The outcome for one pending gang and why."""

    gang: str
    verdict: Verdict
    reason: str
    bindings: tuple[Binding, ...] = ()
    victims: tuple[str, ...] = ()  # running gangs that must go first (NOMINATED only)
    path: str = ""  # greedy | exact | preemption | "" when not placed


@dataclass(frozen=True)
class Plan:
    """The packer's whole answer for one snapshot."""

    decisions: tuple[GangDecision, ...]
    evictions: tuple[Eviction, ...] = ()
    moves: tuple[Move, ...] = ()
    solver: tuple[SolverReport, ...] = ()

    def decision(self, gang: str) -> GangDecision:
        """The decision for pending gang `gang`."""
        for d in self.decisions:
            if d.gang == gang:
                return d
        raise KeyError(gang)

    @property
    def bindings(self) -> tuple[Binding, ...]:
        """Every binding of every placed gang (bound or nominated)."""
        return tuple(b for d in self.decisions for b in d.bindings)
