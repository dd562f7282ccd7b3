"""The exact path: the solver's time budget is honoured, small instances are proven optimal, moves repack."""

from __future__ import annotations

import random
import time

import numpy as np

from bench.packer.baselines import LeastAllocated
from packer import GangKind, Packer, PackerConfig, SolverStatus, Verdict
from packer.exact import ExactConfig, PendingItem, RunningItem, solve
from packer.snapshot import ClusterSnapshot, Gang, Node, Placement, PodRequest, RunningGang
from packer.state import ClusterState
from tests.unit.packer.builders import ClusterBuilder, expect_applicable, gang, pod

SLACK_S = 1.0  # the solver's own overshoot and scheduling noise on a loaded 2-core machine


def knapsack_state(nodes: int, gangs: int, seed: int) -> tuple[ClusterState, list[PendingItem]]:
    """GPU shares of awkward sizes, three priorities, more asked than fits: hard to prove optimal."""
    rng = random.Random(seed)
    free = np.array([[rng.choice([1000, 1000, 870, 640, 410]) for _ in range(4)] for _ in range(nodes)])
    state = ClusterState(
        [f"n{i:03d}" for i in range(nodes)],
        free,
        [4] * nodes,
        [10**6] * nodes,
        [10**7] * nodes,
        [10**6] * nodes,
        [10**7] * nodes,
        ["H100"] * nodes,
    )
    sizes = [130, 170, 230, 310, 370, 430, 470, 530, 590, 610, 670, 710]
    pending = [
        PendingItem(
            Gang(f"g{i:03d}", (PodRequest(f"p{i}", 0, 0, 1, rng.choice(sizes)),), priority=rng.choice([1, 2, 3]))
        )
        for i in range(gangs)
    ]
    return state, pending


def test_budget_is_honoured_on_a_hard_instance() -> None:
    import ortools.sat.python.cp_model  # noqa: F401  (imported up front: a one-time cost, not part of a decision)

    state, pending = knapsack_state(nodes=12, gangs=80, seed=1)
    budget = 0.5
    start = time.perf_counter()
    result = solve(
        state, pending, [], np.arange(state.size), {}, ExactConfig(time_budget_s=budget), clock=time.perf_counter
    )
    elapsed = time.perf_counter() - start
    assert result.report.status in (SolverStatus.FEASIBLE, SolverStatus.UNKNOWN)
    assert elapsed <= budget + SLACK_S


def test_small_instance_is_proven_optimal() -> None:
    state, pending = knapsack_state(nodes=2, gangs=8, seed=2)
    result = solve(state, pending, [], np.arange(state.size), {}, ExactConfig(time_budget_s=1.0))
    assert result.report.status == SolverStatus.OPTIMAL
    assert result.report.objective == result.report.best_bound


def test_repacking_moves_a_share_to_free_a_whole_gpu() -> None:
    # Two 0.4 shares sit on different GPUs of a 2-GPU node; a whole-GPU pod fits only if one share moves over.
    state = ClusterState(["a"], np.array([[600, 600]]), [2], [64000], [10**6], [64000], [10**6], ["H100"])
    running = [
        RunningGang(f"s{i}", (PodRequest(f"s{i}", 0, 0, 1, 400),), (Placement(f"s{i}", "a", (i,)),), movable=True)
        for i in range(2)
    ]
    items = [RunningItem(g, evictable=False, movable=True) for g in running]
    want = Gang("w", (PodRequest("w", 0, 0, 1, 1000),))
    result = solve(state, [PendingItem(want)], items, np.arange(1), {}, ExactConfig(move_cost=1))
    assert result.report.status == SolverStatus.OPTIMAL
    assert len(result.moved) == 1
    assert "w" in result.placed
    assert state.gpu_free.tolist() == [[600, 600]], "solve() must not change the state"


def test_priority_classes_are_lexicographic() -> None:
    # One high-priority 8-GPU gang outweighs many low-priority single GPUs on the only node.
    b = ClusterBuilder().node("a").run("blocker", "a", gpus=8, priority=0, kind=GangKind.FINETUNE)
    b.pend(gang("hi", pod("h", 8), priority=100))
    for i in range(7):
        b.pend(gang(f"lo{i}", pod(f"l{i}", 1), priority=50))
    snap = b.build()
    plan = Packer(PackerConfig()).decide(snap, now=0.0)
    expect_applicable(snap, plan)
    assert plan.decision("hi").verdict == Verdict.NOMINATED
    assert all(plan.decision(f"lo{i}").verdict == Verdict.WAITING for i in range(7))


def test_exact_path_re_places_gangs_the_greedy_path_already_planned() -> None:
    # Spreading puts the 4-GPU gang on the empty 8-GPU node; no preemption is allowed, yet the exact path moves
    # that (not yet bound) gang to the 4-GPU node so the 8-GPU gang fits too.
    snap = (
        ClusterBuilder()
        .node("big", gpus=8)
        .node("small", gpus=4)
        .pend(gang("g1", pod("p1", 4), priority=10), gang("g2", pod("p2", 8), priority=10, created=1.0))
        .build()
    )
    spread = PackerConfig(scorer=LeastAllocated, preemption=False)
    greedy = Packer(PackerConfig(scorer=LeastAllocated, preemption=False, exact=False)).decide(snap, now=0.0)
    assert greedy.decision("g2").verdict == Verdict.WAITING
    plan = Packer(spread).decide(snap, now=0.0)
    expect_applicable(snap, plan)
    assert plan.decision("g1").bindings[0].node == "small"
    assert plan.decision("g2").bindings[0].node == "big"
    assert plan.decision("g2").path == "exact"
    assert plan.evictions == ()


def test_a_chain_of_moves_is_applied_as_a_whole() -> None:
    # The pending pod may only use node x, where share a sits; a may only go to y, where share b leaves too little
    # room; b may go to z. Moving a onto y before b has left would over-book y: the moves must land together.
    nodes = [
        Node(name, [1000], 8000, 8192, 8000, 8192, product) for name, product in (("x", "X"), ("y", "Y"), ("z", "Z"))
    ]
    nodes[0].gpu_free_milli[0] = 500
    nodes[1].gpu_free_milli[0] = 400

    def share(uid: str, node: str, milli: int, products: str) -> RunningGang:
        p = PodRequest(uid, 0, 0, 1, milli)
        return RunningGang(uid, (p,), (Placement(uid, node, (0,)),), movable=True, gpu_products=frozenset(products))

    want = Gang("w", (PodRequest("w", 0, 0, 1, 1000),), gpu_products=frozenset("X"))
    snap = ClusterSnapshot(nodes, [share("a", "x", 500, "XY"), share("b", "y", 600, "YZ")], [want])
    plan = Packer(PackerConfig(allow_moves=True)).decide(snap, now=0.0)
    assert {(m.gang, m.to_node) for m in plan.moves} == {("a", "y"), ("b", "z")}
    assert plan.decision("w").bindings[0].node == "x"
