"""The benchmark's baseline scorers: registered by name, deterministic, and kept out of the operator's packer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bench.packer.baselines import BASELINES, LeastAllocated, MostAllocated, baseline
from packer import Packer, PackerConfig
from packer.fragmentation import TargetWorkload, WorkloadShape
from packer.scoring import EbbtideScorer, ScorerContext, ScorerFactory
from packer.snapshot import ClusterSnapshot
from packer.state import ClusterState
from tests.unit.packer.builders import ClusterBuilder, gang, pod

WORKLOAD = TargetWorkload((WorkloadShape(0, 0, 1, 500), WorkloadShape(0, 0, 2, 1000)), (0.5, 0.5))


def test_registry_has_the_three_baselines() -> None:
    assert set(BASELINES) == {"least-allocated", "most-allocated", "fgd"}
    state = ClusterState(["a"], np.array([[1000]]), [1], [1000], [1000], [1000], [1000], [""])
    for name in BASELINES:
        assert baseline(name)(ScorerContext.of(state, WORKLOAD)).name == name
    with pytest.raises(ValueError, match="fgd"):
        baseline("random")


def test_the_operators_packer_scores_with_ebbtide() -> None:
    assert PackerConfig().scorer is EbbtideScorer


@pytest.mark.parametrize("scorer", [LeastAllocated, MostAllocated])
def test_same_plan_whatever_the_input_order(scorer: ScorerFactory) -> None:
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


def test_spreading_and_best_fit_disagree_on_where_a_gpu_goes() -> None:
    snap = ClusterBuilder().node("empty", gpus=8).node("half", gpus=8).run("r", "half", gpus=4).pend(gang("g")).build()
    spread = Packer(PackerConfig(scorer=LeastAllocated, exact=False)).decide(snap, now=0.0)
    packed = Packer(PackerConfig(scorer=MostAllocated, exact=False)).decide(snap, now=0.0)
    assert spread.decision("g").bindings[0].node == "empty"
    assert packed.decision("g").bindings[0].node == "half"
