"""Widening a MoE service under a load step three ways (simulator/cluster/moe.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from catalogue.elastic import resize_timings
from catalogue.gpus import lookup_gpu
from catalogue.models import lookup_model
from catalogue.perf import PerfModel
from simulator.cluster.moe import MoeScenario, StrategyResult, expert_movement, run_moe

SMALL = MoeScenario(base_rps=10.0, step_rps=25.0, step_at_s=30.0, duration_s=200.0)


@pytest.fixture(scope="module")
def results() -> dict[str, StrategyResult]:
    return {r.strategy: r for r in run_moe(SMALL)}


def test_in_place_capacity_arrives_after_pull_prepare_and_commit(results: dict[str, StrategyResult]) -> None:
    model = lookup_model(SMALL.model)
    assert model is not None
    t = resize_timings(model, 2, 4, 32)
    assert results["in-place"].capacity_online_s == pytest.approx(SMALL.image_pull_s + t.total_s)
    assert [what for _, what in results["in-place"].timeline][-1] == "EP4 serves"


def test_cold_starts_pay_the_pull_the_weights_and_the_init(results: dict[str, StrategyResult]) -> None:
    model, gpu = lookup_model(SMALL.model), lookup_gpu(SMALL.gpu)
    assert model is not None and gpu is not None
    fresh = PerfModel(model, gpu, 1, expert_parallel=2).cold_start_seconds(SMALL.image_pull_s, SMALL.storage_gbps)
    assert results["whole-replica"].capacity_online_s == pytest.approx(fresh)
    assert results["cold-restart"].capacity_online_s > fresh, "the restart first drains what the instance runs"


def test_in_place_fails_nothing_and_outserves_the_cold_restart(results: dict[str, StrategyResult]) -> None:
    in_place, cold = results["in-place"], results["cold-restart"]
    assert in_place.failed == 0
    assert cold.failed > 0, "with the image to pull, requests wait past the gateway timeout"
    assert in_place.throughput_tok_s > 2 * cold.throughput_tok_s
    assert in_place.requests == cold.requests == results["whole-replica"].requests, "same load for every strategy"


def test_in_place_keeps_its_expert_slots_so_it_holds_more_weights_than_a_fresh_wide_instance(
    results: dict[str, StrategyResult],
) -> None:
    assert results["in-place"].peak_weight_gb > results["cold-restart"].peak_weight_gb
    assert results["in-place"].peak_gpus == results["cold-restart"].peak_gpus == 4


def test_a_pre_pulled_image_shortens_every_cold_path_by_the_pull() -> None:
    model = lookup_model(SMALL.model)
    assert model is not None
    pulled = {r.strategy: r for r in run_moe(replace(SMALL, image_pull_s=0.0, duration_s=120.0))}
    assert pulled["in-place"].capacity_online_s == pytest.approx(resize_timings(model, 2, 4, 32).total_s)
    assert pulled["in-place"].failed == 0


def test_the_planner_moves_fewer_expert_bytes_than_eplb_from_scratch() -> None:
    moved = expert_movement(SMALL)
    assert 0 < moved.widen_planned_gb < moved.widen_scratch_gb
    assert 0 < moved.narrow_planned_gb < moved.narrow_scratch_gb


def test_a_dense_model_is_refused() -> None:
    with pytest.raises(ValueError, match="not a MoE model"):
        run_moe(replace(SMALL, model="llama-3-8b"))
