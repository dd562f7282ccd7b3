"""What-if discipline: every decision works on a copy, every trial is undone, the snapshot is never modified."""

from __future__ import annotations

import random

import pytest

from packer import GangKind, Packer, PackerConfig
from packer.packer import learn_workload
from packer.preemption import CostModel, ServiceLedger, greedy_preemption
from packer.scoring import EbbtideScorer, ScorerContext
from packer.state import ClusterState
from tests.unit.packer.builders import RACK, ClusterBuilder, gang, pod


def busy_cluster(seed: int) -> ClusterBuilder:
    """A mixed cluster: fine-tuning and serving gangs at three priorities, shares, racks, pending gangs."""
    rng = random.Random(seed)
    b = ClusterBuilder()
    for i in range(10):
        b.node(f"n{i}", labels={RACK: f"r{i // 4}"})
    for i in range(10):
        prio = rng.choice([0, 100, 1000])
        if rng.random() < 0.5:
            b.run(f"ft{i}", f"n{i}", gpus=rng.choice([4, 8]), priority=prio, checkpoint=rng.uniform(0, 900))
        else:
            b.run(f"sv{i}", f"n{i}", gpus=4, priority=prio, kind=GangKind.SERVING, service="chat")
    b.service("chat", min_replicas=1, ready=5, pdb_allowed=2)
    b.pend(gang("big", pod("b0", 8), pod("b1", 8), priority=2000, topology=RACK))
    b.pend(gang("share", pod("s", 1, milli=300), priority=500), gang("one", pod("o", 2), priority=50))
    return b


@pytest.mark.parametrize("config", [PackerConfig(), PackerConfig(exact=False), PackerConfig(allow_moves=True)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decide_never_modifies_the_snapshot(config: PackerConfig, seed: int) -> None:
    snap = busy_cluster(seed).build()
    before = snap.fingerprint()
    Packer(config).decide(snap, now=1000.0)
    assert snap.fingerprint() == before, "Snapshot was modified"


def test_failed_preemption_search_leaves_the_state_as_it_was() -> None:
    # Nothing may be preempted for an equal-priority gang: the search fails and must undo every trial.
    b = ClusterBuilder().node("a").node("b").run("x", "a", priority=5).run("y", "b", priority=0)
    snap = b.pend(gang("g", pod("g0", 8), pod("g1", 8), priority=5)).build()
    state = ClusterState.from_snapshot(snap)
    scorer = EbbtideScorer(ScorerContext.of(state, learn_workload(snap)))
    ledger = ServiceLedger(snap.services)
    before = state.fingerprint()
    found = greedy_preemption(state, snap.pending[0], snap.running, scorer, ledger, snap.services, 0.0, CostModel())
    assert found is None
    assert state.fingerprint() == before, "Snapshot was modified"


def test_successful_preemption_is_undone_by_its_undos() -> None:
    b = ClusterBuilder().node("a").run("x", "a", priority=0, kind=GangKind.SERVING, service="s")
    snap = b.service("s", 0, 1, 1).pend(gang("g", pod("g0", 8), priority=5)).build()
    state = ClusterState.from_snapshot(snap)
    scorer = EbbtideScorer(ScorerContext.of(state, learn_workload(snap)))
    ledger = ServiceLedger(snap.services)
    before, left = state.fingerprint(), dict(ledger.left)
    found = greedy_preemption(state, snap.pending[0], snap.running, scorer, ledger, snap.services, 0.0, CostModel())
    assert found is not None
    result, undos = found
    assert [v.uid for v in result.victims] == ["x"]
    assert ledger.left["s"] == 0
    for undo in reversed(undos):
        undo()
    assert state.fingerprint() == before, "Snapshot was modified"
    assert ledger.left == left
