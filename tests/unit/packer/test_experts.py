"""The expert layout planner: EPLB-style balance, fewest expert bytes moved, refusals with the numbers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from catalogue.elastic import expert_bytes
from catalogue.gpus import lookup_gpu
from catalogue.models import lookup_model
from packer.experts import (
    ExpertLayout,
    LayoutRefused,
    check_width,
    contiguous_layout,
    eplb_layout,
    plan_for_model,
    plan_layout,
    replica_counts,
    sender_of,
    starting_layout,
)

GB = 1e9


def zipf_load(experts: int, seed: int, skew: float = 1.0) -> list[float]:
    """Token counts per expert: a skewed law over a seeded permutation, as routers produce."""
    weights = 1000.0 / np.arange(1, experts + 1) ** skew
    return [float(x) for x in weights[np.random.default_rng(seed).permutation(experts)]]


def per_rank(layout: ExpertLayout) -> list[Counter[int]]:
    return [Counter(slots) for slots in layout.ranks]


class TestStartingPoint:
    def test_engines_start_contiguous_and_refuse_uneven_splits(self) -> None:
        assert contiguous_layout(8, 2).ranks == ((0, 1, 2, 3), (4, 5, 6, 7))
        with pytest.raises(LayoutRefused, match="8 experts cannot be split evenly over 3 ranks"):
            contiguous_layout(8, 3)

    @pytest.mark.parametrize(
        ("old", "new", "senders"),
        [
            (2, 4, [0, 1]),  # one joiner each
            (2, 5, [0, 0, 1]),  # the first sender takes the extra joiner
            (3, 8, [0, 0, 1, 1, 2]),
            (4, 5, [0]),
        ],
    )
    def test_joiners_pair_with_contiguous_senders_as_vllm_pairs_them(
        self, old: int, new: int, senders: list[int]
    ) -> None:
        assert [sender_of(j, old, new) for j in range(old, new)] == senders

    def test_joiners_start_from_their_senders_shard_and_scale_down_keeps_the_lowest_ranks(self) -> None:
        current = contiguous_layout(8, 2)
        assert starting_layout(current, 4).ranks == current.ranks + current.ranks
        assert starting_layout(contiguous_layout(8, 4), 2).ranks == ((0, 1), (2, 3))


class TestEplbRule:
    def test_every_expert_once_then_spare_slots_to_the_hottest_per_copy(self) -> None:
        counts = replica_counts([100.0, 10.0, 10.0, 40.0], 7)
        # Spare slots: 100 -> 50 -> 40 (tie with expert 3 at 40: lower id first) ...
        assert counts == [3, 1, 1, 2] and sum(counts) == 7

    def test_too_few_slots_is_refused_with_the_numbers(self) -> None:
        with pytest.raises(LayoutRefused, match="4 experts need 4 slots, the layout has 3"):
            replica_counts([1.0] * 4, 3)

    @pytest.mark.parametrize("seed", range(5))
    def test_from_scratch_layout_holds_every_expert_and_balances_ranks(self, seed: int) -> None:
        load = zipf_load(64, seed)
        layout = eplb_layout(load, 4, 32)
        assert [len(s) for s in layout.ranks] == [32] * 4
        assert set(range(64)) <= {e for s in layout.ranks for e in s}
        loads = layout.rank_loads(load)
        assert max(loads) / (sum(loads) / 4) < 1.05, "replicated hot experts let ranks balance within 5%"


class TestPlan:
    @pytest.mark.parametrize("seed", range(8))
    @pytest.mark.parametrize(("experts", "old", "new"), [(64, 2, 4), (64, 2, 3), (64, 4, 2), (60, 4, 6), (8, 2, 4)])
    def test_never_moves_more_than_the_from_scratch_layout_and_stays_balanced(
        self, seed: int, experts: int, old: int, new: int
    ) -> None:
        load = zipf_load(experts, seed)
        slots = experts // min(old, new)
        current = eplb_layout(zipf_load(experts, seed + 100), old, slots)  # a layout fitted to older traffic
        plan = plan_layout(load, current, new, 1.0)
        assert plan.bytes_moved <= plan.scratch_bytes_moved
        scratch_max = max(eplb_layout(load, new, slots).rank_loads(load))
        assert plan.max_rank_load <= scratch_max * 1.05 + 1e-9
        held = {e for s in plan.layout.ranks for e in s}
        assert held == set(range(experts)) and [len(s) for s in plan.layout.ranks] == [slots] * new

    def test_widening_moves_far_fewer_bytes_than_eplb_from_scratch(self) -> None:
        model = lookup_model("deepseek-v2-lite")
        assert model is not None
        plan = plan_layout(zipf_load(64, 0), contiguous_layout(64, 2), 4, expert_bytes(model))
        assert plan.bytes_moved < 0.75 * plan.scratch_bytes_moved
        assert plan.add_ranks == (2, 3) and plan.retire_ranks == ()

    def test_narrowing_retires_the_highest_ranks(self) -> None:
        load = zipf_load(64, 1)
        wide = plan_layout(load, contiguous_layout(64, 2), 4, 1.0).layout
        plan = plan_layout(load, wide, 2, 1.0)
        assert plan.retire_ranks == (2, 3) and plan.add_ranks == () and plan.layout.width == 2
        assert sorted(e for s in plan.layout.ranks for e in s) == list(range(64)), "no room left for replicas"

    def test_a_layout_already_balanced_for_the_load_stays_put(self) -> None:
        load = zipf_load(64, 2)
        current = eplb_layout(load, 4, 16)
        plan = plan_layout(load, current, 4, 1.0)
        assert plan.moves == () and plan.bytes_moved == 0 and plan.layout.ranks == current.ranks

    def test_moves_turn_the_starting_layout_into_the_planned_one(self) -> None:
        load = zipf_load(64, 3)
        current = contiguous_layout(64, 2)
        plan = plan_layout(load, current, 4, 2.0)
        start = per_rank(starting_layout(current, 4))
        for move in plan.moves:
            assert move.expert in current.ranks[move.from_rank], "every copy is read from a rank that has it"
            start[move.to_rank][move.expert] += 1
        for r, wanted in enumerate(per_rank(plan.layout)):
            assert not wanted - start[r], f"rank {r} received everything it holds"
        assert plan.bytes_moved == 2.0 * len(plan.moves)

    def test_kept_experts_keep_their_slots(self) -> None:
        load = zipf_load(64, 4)
        current = contiguous_layout(64, 2)
        plan = plan_layout(load, current, 4, 1.0)
        start = starting_layout(current, 4)
        for r in range(4):
            for i, e in enumerate(start.ranks[r]):
                if e in plan.layout.ranks[r]:
                    assert plan.layout.ranks[r][i] == e, f"rank {r} kept expert {e} but moved it off slot {i}"

    def test_deterministic_and_explained(self) -> None:
        load = zipf_load(64, 5)
        current = contiguous_layout(64, 2)
        first, second = plan_layout(load, current, 4, 0.5 * GB), plan_layout(load, current, 4, 0.5 * GB)
        assert first == second
        text = "\n".join(first.explanation)
        assert "64 experts on 4 ranks x 32 slots" in text
        assert f"{len(first.moves)} expert(s) moved" in text and "from scratch" in text
        assert "ranks [2, 3] join" in text

    def test_an_idle_model_is_laid_out_as_if_evenly_loaded(self) -> None:
        plan = plan_layout([0.0] * 8, contiguous_layout(8, 2), 4, 1.0)
        assert plan.layout.replicas(8) == [2] * 8 and plan.balancedness == pytest.approx(1.0)


class TestRefusals:
    def test_a_width_whose_slots_cannot_hold_every_expert(self) -> None:
        with pytest.raises(
            LayoutRefused, match=r"64 experts do not fit 1 ranks x 32 expert slots = 32 slots; the minimum width is 2"
        ):
            plan_layout([1.0] * 64, contiguous_layout(64, 2), 1, 1.0)

    @pytest.mark.parametrize(
        ("load", "layout", "match"),
        [
            ([], ExpertLayout(((0,),)), "non-empty"),
            ([1.0, -1.0], ExpertLayout(((0, 1),)), "non-negative"),
            ([1.0, float("nan")], ExpertLayout(((0, 1),)), "finite"),
            ([1.0, 1.0], ExpertLayout(((0,), (1, 1))), "same slots on every rank"),
            ([1.0, 1.0, 1.0], ExpertLayout(((0, 1),)), "every one of the 3 experts"),
        ],
    )
    def test_malformed_input(self, load: list[float], layout: ExpertLayout, match: str) -> None:
        with pytest.raises(LayoutRefused, match=match):
            plan_layout(load, layout, 1, 1.0)

    def test_hbm_too_small_names_the_gigabytes(self) -> None:
        model, l4 = lookup_model("mixtral-8x7b"), lookup_gpu("L4")
        assert model is not None and l4 is not None
        with pytest.raises(LayoutRefused, match=r"needs \d+\.\d GB per GPU .* NVIDIA-L4 offers 21\.6 GB"):
            check_width(model, l4, 4, 4)

    def test_more_joining_gpus_than_are_free(self) -> None:
        model, h100 = lookup_model("deepseek-v2-lite"), lookup_gpu("H100")
        assert model is not None and h100 is not None
        with pytest.raises(LayoutRefused, match=r"needs 4 GPUs for the joining ranks .* only 3 are free"):
            check_width(model, h100, 4, 32, tensor_parallel=2, free_gpus=3, current_width=2)

    def test_a_dense_model_has_no_layout(self) -> None:
        model, h100 = lookup_model("llama-3-8b"), lookup_gpu("H100")
        assert model is not None and h100 is not None
        with pytest.raises(LayoutRefused, match="dense"):
            check_width(model, h100, 2, 1)

    def test_plan_for_model_checks_the_load_vector_and_the_width(self) -> None:
        model, h100 = lookup_model("deepseek-v2-lite"), lookup_gpu("H100")
        assert model is not None and h100 is not None
        current = contiguous_layout(64, 2)
        with pytest.raises(LayoutRefused, match="64 experts but the load vector has 8"):
            plan_for_model(model, h100, [1.0] * 8, current, 4)
        with pytest.raises(LayoutRefused, match="only 1 are free"):
            plan_for_model(model, h100, [1.0] * 64, current, 4, free_gpus=1)
        plan = plan_for_model(model, h100, zipf_load(64, 0), current, 4, free_gpus=2)
        assert plan.new_width == 4 and plan.bytes_moved > 0
