"""Preemption behaviour: strictly lower priority only, cheapest victims, service budgets, checkpoint-first marks."""

from __future__ import annotations

import pytest

from packer import GangKind, Packer, PackerConfig, Plan, Verdict
from packer.snapshot import ClusterSnapshot
from tests.unit.packer.builders import A100, H100, ClusterBuilder, expect_applicable, expect_whole_gangs, gang, pod

EXACT = PackerConfig()
GREEDY = PackerConfig(exact=False)
BOTH = pytest.mark.parametrize("config", [EXACT, GREEDY], ids=["exact", "greedy"])


def decide(snapshot: ClusterSnapshot, config: PackerConfig, now: float = 1000.0) -> Plan:
    """Decide, then check the plan is applicable and gang-atomic."""
    plan = Packer(config).decide(snapshot, now=now)
    expect_applicable(snapshot, plan)
    expect_whole_gangs(snapshot, plan)
    return plan


def full_cluster(*priorities: int) -> ClusterBuilder:
    """One 8-GPU node per running gang, each gang filling its node."""
    b = ClusterBuilder()
    for i, prio in enumerate(priorities):
        b.node(f"n{i}").run(f"r{i}-p{prio}", f"n{i}", priority=prio)
    return b


class TestNeverEqualOrHigher:
    @BOTH
    def test_equal_priority_is_never_evicted(self, config: PackerConfig) -> None:
        plan = decide(full_cluster(100, 100).pend(gang("g", pod("p", 8), priority=100)).build(), config)
        assert plan.decision("g").verdict == Verdict.WAITING
        assert plan.evictions == ()

    @BOTH
    def test_higher_priority_is_never_evicted(self, config: PackerConfig) -> None:
        plan = decide(full_cluster(200, 300).pend(gang("g", pod("p", 8), priority=100)).build(), config)
        assert plan.evictions == ()

    @BOTH
    def test_only_the_lower_one_goes(self, config: PackerConfig) -> None:
        plan = decide(full_cluster(100, 50, 200).pend(gang("g", pod("p", 8), priority=100)).build(), config)
        assert [e.gang for e in plan.evictions] == ["r1-p50"]
        d = plan.decision("g")
        assert d.verdict == Verdict.NOMINATED
        assert d.victims == ("r1-p50",)
        assert d.bindings[0].node == "n1"

    @BOTH
    def test_evictions_always_outrank_their_victims(self, config: PackerConfig) -> None:
        b = full_cluster(0, 10, 20, 30, 40, 50)
        b.pend(gang("a", pod("a0", 8), pod("a1", 8), priority=25), gang("b", pod("b0", 8), priority=45))
        plan = decide(b.build(), config)
        prio = {"a": 25, "b": 45}
        for e in plan.evictions:
            assert prio[e.preemptor] > e.priority
        assert {e.priority for e in plan.evictions} <= {0, 10, 20, 30, 40}


class TestVictimChoice:
    @BOTH
    def test_lowest_priority_then_least_work_lost(self, config: PackerConfig) -> None:
        b = ClusterBuilder()
        for i in range(4):
            b.node(f"n{i}")
        b.run("old-ckpt", "n0", priority=5, checkpoint=100.0)  # 900 s lost
        b.run("fresh-ckpt", "n1", priority=5, checkpoint=990.0)  # 10 s lost
        b.run("lowest", "n2", priority=1, checkpoint=0.0)  # lowest priority, most work lost
        b.run("mid", "n3", priority=7, checkpoint=999.0)
        plan = decide(b.pend(gang("g", pod("p0", 8), pod("p1", 8), priority=10)).build(), config)
        assert sorted(e.gang for e in plan.evictions) == ["fresh-ckpt", "lowest"]

    @BOTH
    def test_whole_gangs_only(self, config: PackerConfig) -> None:
        # The victim spans two nodes; evicting it frees both, and both of its pods go.
        b = ClusterBuilder().node("a").node("b").run("wide", "a", "b", priority=0)
        plan = decide(b.pend(gang("g", pod("p", 8), priority=10)).build(), config)
        assert [e.gang for e in plan.evictions] == ["wide"]

    @BOTH
    def test_non_preemptible_fine_tune_is_safe(self, config: PackerConfig) -> None:
        b = ClusterBuilder().node("a").run("keep", "a", priority=0, preemptible=False)
        plan = decide(b.pend(gang("g", pod("p", 8), priority=10)).build(), config)
        assert plan.evictions == ()
        assert plan.decision("g").verdict == Verdict.WAITING

    def test_exact_path_places_what_greedy_preemption_cannot(self) -> None:
        # Greedy preemption serves g1 first with the cheapest victim, which sits on the only A100 node that g2
        # needs; the exact path sends g1 to the H100 node instead and places both.
        b = ClusterBuilder().node("h", product=H100).node("a", product=A100)
        b.run("vh", "h", priority=0, checkpoint=0.0).run("va", "a", priority=0, checkpoint=990.0)
        b.pend(gang("g1", pod("p1", 8), priority=10), gang("g2", pod("p2", 8), priority=10, products=(A100,)))
        snap = b.build()
        greedy = decide(snap, GREEDY)
        exact = decide(snap, EXACT)
        assert greedy.decision("g2").verdict == Verdict.WAITING
        assert exact.decision("g1").verdict == Verdict.NOMINATED
        assert exact.decision("g2").verdict == Verdict.NOMINATED
        assert exact.decision("g1").bindings[0].node == "h"
        assert exact.solver[0].status.value == "optimal"


class TestServiceBudgets:
    def serving(self, ready: int, min_replicas: int, pdb: int) -> ClusterSnapshot:
        b = ClusterBuilder()
        for i in range(ready):
            b.node(f"n{i}").run(f"rep{i}", f"n{i}", priority=0, kind=GangKind.SERVING, service="chat")
        b.service("chat", min_replicas=min_replicas, ready=ready, pdb_allowed=pdb)
        return b.pend(gang("g", pod("p0", 8), pod("p1", 8), priority=10)).build()

    @BOTH
    def test_service_never_drops_below_min_replicas(self, config: PackerConfig) -> None:
        plan = decide(self.serving(ready=3, min_replicas=2, pdb=5), config)
        assert len(plan.evictions) <= 1
        assert plan.decision("g").verdict == Verdict.WAITING

    @BOTH
    def test_pdb_allowance_bounds_evictions(self, config: PackerConfig) -> None:
        plan = decide(self.serving(ready=4, min_replicas=1, pdb=1), config)
        assert plan.evictions == ()

    @BOTH
    def test_within_budget_replicas_may_go(self, config: PackerConfig) -> None:
        plan = decide(self.serving(ready=4, min_replicas=1, pdb=2), config)
        assert len(plan.evictions) == 2
        assert all(not e.checkpoint_first for e in plan.evictions)


class TestCheckpointFirst:
    @BOTH
    def test_preemptible_fine_tune_is_marked_checkpoint_first(self, config: PackerConfig) -> None:
        b = ClusterBuilder().node("a").run("ft", "a", priority=0, checkpoint=400.0)
        plan = decide(b.pend(gang("g", pod("p", 8), priority=10)).build(), config, now=1000.0)
        (e,) = plan.evictions
        assert e.checkpoint_first
        assert e.work_lost_s == pytest.approx(600.0)
        assert "priority 10 > 0" in e.reason
