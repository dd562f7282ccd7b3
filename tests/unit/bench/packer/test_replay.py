"""The trace replay's Ebbtide rows decide with the operator's own Packer, pass by pass, and apply plans whole."""

from __future__ import annotations

import random
import time
from typing import Any, cast

from bench.packer.replay import (
    ReplayCluster,
    ReplayConfig,
    ReplayResult,
    decide_in_passes,
    packer_config,
    replay,
)
from bench.packer.trace import TraceNode, TracePod
from controllers.shells.scheduling import Scheduler
from packer import Binding, Gang, GangDecision, Packer, Plan, PodRequest, Verdict
from packer.fragmentation import TargetWorkload, WorkloadShape

NODES = [
    TraceNode(f"node-{i}", 32_000, 256 * 1024, gpus, "V100M16" if i % 2 else "T4")
    for i, gpus in enumerate([8, 8, 4, 4, 2, 1])
]
UNUSED = TargetWorkload((WorkloadShape(0, 0, 1, 1000),), (1.0,))  # the FGD baseline's only; not read here


def the_shells_packer() -> Packer:
    """The Packer the operator's scheduling shell builds (it touches neither Kube nor cache until a pass runs)."""
    return Scheduler(kube=cast(Any, None), cache=cast(Any, None)).packer


def mixed_arrivals(n: int, seed: int) -> list[TracePod]:
    """Shares, whole GPUs, CPU-only pods and a product-constrained one, small enough that all of them fit."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        shape = rng.choice([(1, 250), (1, 500), (1, 1000), (2, 1000), (0, 1000)])
        req = PodRequest(f"p{i}", rng.choice([1000, 4000]), rng.choice([2048, 16384]), *shape)
        out.append(TracePod(f"p{i}", req, frozenset({"T4"}) if i % 7 == 3 else frozenset()))
    return out


def test_the_benchmark_decides_with_the_operators_packer_config() -> None:
    shell = the_shells_packer()
    assert packer_config("ebbtide", ReplayConfig()) == shell.config
    assert shell.clock is time.monotonic
    moves = packer_config("ebbtide+cpsat", ReplayConfig(repack_nodes=6))
    assert moves.allow_moves and not shell.config.allow_moves
    assert moves.exact_config.max_nodes == 6


def test_each_pass_is_the_shells_decision_applied() -> None:
    seq = mixed_arrivals(18, seed=5)
    bench = ReplayCluster(NODES, seed=3)
    res = ReplayResult("t", "ebbtide", 3, float(sum(n.gpus for n in NODES)), [], [])
    decide_in_passes(bench, seq, Packer(packer_config("ebbtide", ReplayConfig()), clock=time.monotonic), 4, res)

    shell, mirror = the_shells_packer(), ReplayCluster(NODES, seed=3)
    for first in range(0, len(seq), 4):
        pending = [
            Gang(tp.name, (tp.request,), gpu_products=tp.gpu_products, created_s=float(first + i))
            for i, tp in enumerate(seq[first : first + 4])
        ]
        mirror.apply(shell.decide(mirror.snapshot(pending), now=float(first)), pending)

    assert res.failed_pods == 0 and res.passes == 5
    assert bench.running == mirror.running
    assert [n.gpu_free_milli for n in bench.nodes] == [n.gpu_free_milli for n in mirror.nodes]
    assert len({pl.node for g in bench.running.values() for pl in g.placements}) > 1


def test_a_pod_no_node_can_hold_fails_and_the_others_land() -> None:
    seq = mixed_arrivals(5, seed=1)
    seq.insert(2, TracePod("huge", PodRequest("huge", 1000, 1024, 16), frozenset()))
    r = replay("t", NODES, seq, "ebbtide", UNUSED, 42, ReplayConfig(pass_size=3))
    assert r.failed_pods == 1
    assert r.allocated_gpus == sum(tp.request.gpu_total_milli for tp in seq if tp.name != "huge") / 1000
    assert len(r.alloc_pct) == len(seq) and r.passes == 2


def test_repacking_moves_land_together_and_make_room() -> None:
    # a (0.5) sits on x and may go to y; b (0.6) sits on y and may go to z; w wants a whole GPU of x's product.
    nodes = [TraceNode(name, 8000, 8192, 1, product) for name, product in (("x", "X"), ("y", "Y"), ("z", "Z"))]
    cluster = ReplayCluster(nodes, seed=0)
    names = {n.name.split("-", 1)[1]: n.name for n in cluster.nodes}
    first = [
        Gang("a", (PodRequest("a", 0, 0, 1, 500),), gpu_products=frozenset({"X", "Y"})),
        Gang("b", (PodRequest("b", 0, 0, 1, 600),), gpu_products=frozenset({"Y", "Z"})),
    ]
    bound = tuple(
        GangDecision(g.uid, Verdict.BOUND, "", (Binding(g.uid, g.uid, names[where], (0,)),))
        for g, where in zip(first, ("x", "y"), strict=True)
    )
    assert cluster.apply(Plan(bound), first) == {"a", "b"}
    want = [Gang("w", (PodRequest("w", 0, 0, 1, 1000),), gpu_products=frozenset({"X"}))]
    plan = Packer(packer_config("ebbtide+cpsat", ReplayConfig()), clock=time.monotonic).decide(
        cluster.snapshot(want), now=0.0
    )
    assert cluster.apply(plan, want) == {"w"}
    assert len(plan.moves) == 2
    assert [n.gpu_free_milli for n in cluster.nodes] == [[0], [500], [400]]
