"""Placement behaviour: whole gangs, GPU shares, topology, taints and affinity, unschedulable verdicts, tie-breaks."""

from __future__ import annotations

import random

import pytest

from packer import Packer, PackerConfig, Plan, Taint, TaintEffect, Toleration, Verdict
from packer.scoring import EbbtideScorer, FragmentationGradient, ScorerFactory
from packer.snapshot import ClusterSnapshot
from tests.unit.packer.builders import (
    A100,
    H100,
    RACK,
    ClusterBuilder,
    expect_applicable,
    expect_whole_gangs,
    gang,
    pod,
)

GREEDY_ONLY = PackerConfig(exact=False, preemption=False)


def decide(snapshot: ClusterSnapshot, config: PackerConfig | None = None) -> Plan:
    """Decide, then check the plan is applicable and gang-atomic."""
    plan = Packer(config).decide(snapshot, now=1000.0)
    expect_applicable(snapshot, plan)
    expect_whole_gangs(snapshot, plan)
    return plan


class TestGangAtomicity:
    def test_gang_that_fits_is_bound_whole(self) -> None:
        snap = (
            ClusterBuilder()
            .node("a")
            .node("b")
            .node("c")
            .pend(gang("g", pod("p0", 8), pod("p1", 8), pod("p2", 8)))
            .build()
        )
        plan = Packer().decide(snap, now=0.0)
        d = plan.decision("g")
        assert d.verdict == Verdict.BOUND
        assert sorted(b.node for b in d.bindings) == ["a", "b", "c"]
        expect_applicable(snap, plan)

    def test_gang_that_does_not_fit_gets_no_pod_bound(self) -> None:
        b = ClusterBuilder().node("a").node("b").node("c").run("busy", "c", priority=100, preemptible=False)
        snap = b.pend(gang("g", pod("p0", 8), pod("p1", 8), pod("p2", 8))).build()
        plan = Packer().decide(snap, now=0.0)
        d = plan.decision("g")
        assert d.verdict == Verdict.WAITING
        assert d.bindings == ()
        assert plan.bindings == ()

    def test_failed_gang_leaves_room_for_the_next(self) -> None:
        # The 3-pod gang is tried first (higher priority) and must not keep a and b half-reserved.
        b = ClusterBuilder().node("a").node("b").node("c").run("busy", "c", priority=100, preemptible=False)
        snap = b.pend(
            gang("big", pod("p0", 8), pod("p1", 8), pod("p2", 8), priority=10),
            gang("small", pod("q0", 8), pod("q1", 8)),
        ).build()
        plan = decide(snap, GREEDY_ONLY)
        assert plan.decision("big").verdict == Verdict.WAITING
        assert plan.decision("small").verdict == Verdict.BOUND


class TestFractionalGpus:
    def test_two_halves_share_one_gpu(self) -> None:
        snap = (
            ClusterBuilder()
            .node("a", gpus=2)
            .pend(gang("h1", pod("x", 1, milli=500)), gang("h2", pod("y", 1, milli=500), created=1.0))
            .build()
        )
        plan = decide(snap)
        gpus = {plan.decision(u).bindings[0].gpu_indices for u in ("h1", "h2")}
        assert len(gpus) == 1, "both halves should pack onto the same GPU, keeping the other one whole"

    def test_share_does_not_fit_a_gpu_with_less_left(self) -> None:
        b = ClusterBuilder().node("a", gpus=1).run("r", "a", gpus=1, milli=600, priority=100, preemptible=False)
        plan = decide(b.pend(gang("s", pod("x", 1, milli=500))).build())
        assert plan.decision("s").verdict == Verdict.WAITING

    def test_whole_gpu_pod_skips_partially_used_gpus(self) -> None:
        b = ClusterBuilder().node("a", gpus=2).run("r", "a", gpus=1, milli=100, priority=100, preemptible=False)
        plan = decide(b.pend(gang("w", pod("x", 1))).build())
        assert plan.decision("w").bindings[0].gpu_indices == (1,)
        plan2 = decide(b.pend(gang("w2", pod("y", 2))).build())
        assert plan2.decision("w2").verdict == Verdict.WAITING


class TestTopology:
    def test_multi_node_gang_stays_in_one_rack(self) -> None:
        snap = (
            ClusterBuilder()
            .node("a", labels={RACK: "r1"})
            .node("b", labels={RACK: "r2"})
            .node("c", labels={RACK: "r2"})
            .pend(gang("g", pod("p0", 8), pod("p1", 8), topology=RACK))
            .build()
        )
        plan = decide(snap)
        assert sorted(b.node for b in plan.decision("g").bindings) == ["b", "c"]

    def test_waits_when_no_rack_has_room_now(self) -> None:
        b = (
            ClusterBuilder()
            .node("a", labels={RACK: "r1"})
            .node("b", labels={RACK: "r1"})
            .node("c", labels={RACK: "r2"})
            .node("d", labels={RACK: "r2"})
            .run("busy", "a", priority=100, preemptible=False)
            .run("busy2", "c", priority=100, preemptible=False)
        )
        plan = decide(b.pend(gang("g", pod("p0", 8), pod("p1", 8), topology=RACK)).build())
        assert plan.decision("g").verdict == Verdict.WAITING

    def test_unschedulable_when_no_rack_is_big_enough(self) -> None:
        snap = (
            ClusterBuilder()
            .node("a", labels={RACK: "r1"})
            .node("b", labels={RACK: "r2"})
            .pend(gang("g", pod("p0", 8), pod("p1", 8), topology=RACK))
            .build()
        )
        d = decide(snap).decision("g")
        assert d.verdict == Verdict.UNSCHEDULABLE
        assert RACK in d.reason


class TestNodeConstraints:
    def test_taint_blocks_gangs_without_toleration(self) -> None:
        taint = Taint("dedicated", "training", TaintEffect.NO_SCHEDULE)
        snap = ClusterBuilder().node("tainted", taints=(taint,)).pend(gang("g", pod("p", 1))).build()
        assert decide(snap).decision("g").verdict == Verdict.UNSCHEDULABLE

    def test_toleration_admits(self) -> None:
        taint = Taint("dedicated", "training", TaintEffect.NO_SCHEDULE)
        tol = Toleration("dedicated", "Equal", "training", TaintEffect.NO_SCHEDULE)
        snap = ClusterBuilder().node("tainted", taints=(taint,)).pend(gang("g", pod("p", 1), tolerations=(tol,)))
        assert decide(snap.build()).decision("g").verdict == Verdict.BOUND

    def test_exists_toleration_and_prefer_no_schedule(self) -> None:
        hard = Taint("gpu", "x", TaintEffect.NO_EXECUTE)
        soft = Taint("spot", "", TaintEffect.PREFER_NO_SCHEDULE)
        snap = (
            ClusterBuilder()
            .node("hard", taints=(hard,))
            .node("soft", taints=(soft,))
            .pend(gang("any", pod("p", 8), tolerations=(Toleration("", "Exists"),)))
            .pend(gang("plain", pod("q", 8)))
            .build()
        )
        plan = decide(snap)
        assert plan.decision("plain").bindings[0].node == "soft"
        assert plan.decision("any").bindings[0].node == "hard"

    def test_gpu_product_and_affinity(self) -> None:
        snap = (
            ClusterBuilder()
            .node("h", product=H100, labels={"zone": "z1"})
            .node("a1", product=A100, labels={"zone": "z1"})
            .node("a2", product=A100, labels={"zone": "z2"})
            .pend(gang("g", pod("p", 4), products=(A100,), affinity={"zone": ("z2",)}))
            .build()
        )
        assert decide(snap).decision("g").bindings[0].node == "a2"

    def test_no_matching_product_is_unschedulable(self) -> None:
        snap = ClusterBuilder().node("h", product=H100).pend(gang("g", pod("p", 1), products=(A100,))).build()
        d = decide(snap).decision("g")
        assert d.verdict == Verdict.UNSCHEDULABLE
        assert "GPU product" in d.reason


class TestUnschedulable:
    def test_more_gpus_than_any_node_is_unschedulable_without_preemption(self) -> None:
        b = ClusterBuilder().node("a").node("b")
        b.run("low-a", "a", priority=0).run("low-b", "b", priority=0)
        snap = b.pend(gang("huge", pod("p", 16), priority=1000)).build()
        plan = decide(snap)
        d = plan.decision("huge")
        assert d.verdict == Verdict.UNSCHEDULABLE
        assert "16 GPU" in d.reason
        assert plan.evictions == (), "an impossible gang must not trigger a preemption storm"

    def test_more_gpus_than_the_whole_cluster_is_unschedulable(self) -> None:
        snap = ClusterBuilder().node("a").pend(gang("g", pod("p0", 8), pod("p1", 8))).build()
        assert decide(snap).decision("g").verdict == Verdict.UNSCHEDULABLE


class TestDeterminism:
    def test_ties_go_to_the_first_node_by_name(self) -> None:
        b = ClusterBuilder()
        for name in ("n3", "n1", "n2"):
            b.node(name)
        plan = decide(b.pend(gang("g", pod("p", 8))).build())
        assert plan.decision("g").bindings[0].node == "n1"

    @pytest.mark.parametrize("scorer", [FragmentationGradient, EbbtideScorer])
    def test_same_plan_whatever_the_input_order(self, scorer: ScorerFactory) -> None:
        rng = random.Random(7)
        b = ClusterBuilder()
        for i in range(12):
            b.node(f"n{i:02d}", gpus=rng.choice([4, 8]))
        for i in range(10):
            gpus = rng.choice([1, 1, 2, 4])
            milli = rng.choice([1000, 1000, 300, 500]) if gpus == 1 else 1000
            b.pend(gang(f"g{i}", pod(f"p{i}", gpus, milli=milli)))
        snap = b.build()
        cfg = PackerConfig(scorer=scorer)
        first = Packer(cfg).decide(snap, now=0.0)
        shuffled = ClusterSnapshot(
            sorted(snap.nodes, key=lambda n: rng.random()), [], sorted(snap.pending, key=lambda g: rng.random())
        )
        assert Packer(cfg).decide(shuffled, now=0.0) == first
