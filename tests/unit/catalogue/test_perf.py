"""The performance model: memory fit, compute-bound prefill, memory-bound decode, parallelism, power, cold start."""

from __future__ import annotations

import pytest

from catalogue.gpus import GPU_PROFILES, GPUProfile, lookup_gpu
from catalogue.models import MODEL_CATALOG, ModelSpec
from catalogue.perf import DEFAULT_CALIBRATION, Calibration, ModelDoesNotFitError, PerfModel
from catalogue.power import PowerLimitError


def gpu(name: str) -> GPUProfile:
    profile = lookup_gpu(name)
    assert profile is not None
    return profile


def perf(model: str = "llama-3-8b", gpu_name: str = "H100", tp: int = 1, **kwargs: object) -> PerfModel:
    return PerfModel(MODEL_CATALOG[model], gpu(gpu_name), tp, **kwargs)  # type: ignore[arg-type]


class TestMemory:
    def test_kv_capacity_is_what_the_weights_leave(self) -> None:
        p = perf("llama-3-8b", "H100")
        m = MODEL_CATALOG["llama-3-8b"]
        free = 0.9 * 80e9 - m.params_b * 1e9 * 2 - DEFAULT_CALIBRATION.activation_reserve_gb * 1e9
        assert p.fits
        assert p.kv_capacity_tokens == int(free // m.kv_bytes_per_token)

    def test_tensor_parallel_pools_memory(self) -> None:
        one, four = perf("llama-3-70b", "H100", 2), perf("llama-3-70b", "H100", 4)
        assert four.kv_capacity_tokens > 3 * one.kv_capacity_tokens

    def test_model_that_does_not_fit_is_flagged_with_a_reason(self) -> None:
        p = perf("llama-3-70b", "L4")
        assert not p.fits and p.kv_capacity_tokens == 0
        problem = p.fit_problem()
        assert problem is not None and "llama-3-70b" in problem and "NVIDIA-L4" in problem
        with pytest.raises(ModelDoesNotFitError, match="llama-3-70b"):
            p.require_fit()

    def test_moe_weights_count_every_expert(self) -> None:
        p = perf("mixtral-8x7b", "H100", 2)
        assert p.weight_bytes_per_gpu == pytest.approx(MODEL_CATALOG["mixtral-8x7b"].weight_bytes / 2)

    def test_expert_parallel_spreads_only_the_experts(self) -> None:
        m = MODEL_CATALOG["mixtral-8x7b"]
        p = PerfModel(m, gpu("H100"), 1, expert_parallel=2)
        expected = (m.shared_params_b + m.experts * m.expert_params_b / 2) * 1e9 * m.dtype_bytes
        assert p.weight_bytes_per_gpu == pytest.approx(expected)
        with pytest.raises(ValueError, match="MoE"):
            PerfModel(MODEL_CATALOG["llama-3-8b"], gpu("H100"), 1, expert_parallel=2)

    def test_kv_heads_are_replicated_when_tensor_parallel_exceeds_them(self) -> None:
        narrow = ModelSpec("narrow", 8.0, 8.0, "dense", 0, 32, 4096, 2, 128)
        assert PerfModel(narrow, gpu("H100"), 4).kv_bytes_per_token == 2 * narrow.kv_bytes_per_token
        assert PerfModel(narrow, gpu("H100"), 2).kv_bytes_per_token == narrow.kv_bytes_per_token


class TestTiming:
    def test_prefill_is_compute_bound(self) -> None:
        p = perf()
        assert p.prefill_seconds(8192) / p.prefill_seconds(4096) == pytest.approx(2.0, rel=0.15)

    def test_decode_is_memory_bound(self) -> None:
        p = perf()
        # Weights are read once per step whatever the batch: 8 sequences cost barely more than one.
        assert p.decode_step_seconds(8, 8 * 512) < 1.1 * p.decode_step_seconds(1, 512)

    def test_decode_follows_hbm_bandwidth(self) -> None:
        ratio = perf(gpu_name="A100").decode_step_seconds(1, 256) / perf(gpu_name="H100").decode_step_seconds(1, 256)
        assert ratio == pytest.approx(3350 / 2039, rel=0.1)

    def test_long_contexts_make_decode_slower(self) -> None:
        p = perf()
        assert p.decode_step_seconds(32, 32 * 8000) > 1.5 * p.decode_step_seconds(32, 32 * 500)

    def test_tensor_parallel_speeds_up_with_communication_overhead(self) -> None:
        one, two = perf("llama-3-70b", "H100", 2), perf("llama-3-70b", "H100", 4)
        assert (
            one.decode_step_seconds(1, 1000) / 2 < two.decode_step_seconds(1, 1000) < one.decode_step_seconds(1, 1000)
        )

    def test_moe_decode_reads_only_routed_experts(self) -> None:
        m = MODEL_CATALOG["mixtral-8x7b"]
        dense_twin = ModelSpec("dense-47b", m.params_b, m.params_b, "dense", 0, m.layers, m.hidden, m.kv_heads, 128)
        moe_step = PerfModel(m, gpu("H100"), 2).decode_step_seconds(1, 500)
        dense_step = PerfModel(dense_twin, gpu("H100"), 2).decode_step_seconds(1, 500)
        assert moe_step < 0.5 * dense_step

    def test_mixed_step_costs_at_least_its_parts(self) -> None:
        p = perf()
        mixed = p.step_seconds(2048, 32, 32 * 1000)
        assert mixed >= max(p.prefill_seconds(2048), p.decode_step_seconds(32, 32 * 1000))
        assert p.step_seconds(0, 0, 0) == 0.0

    def test_negative_counts_are_rejected(self) -> None:
        with pytest.raises(ValueError):
            perf().step_seconds(-1, 0, 0)


class TestPower:
    def test_draw_goes_from_idle_to_tdp_and_respects_the_limit(self) -> None:
        h100 = gpu("H100")
        p = perf()
        assert p.power_w(0.0) == h100.idle_w
        assert p.power_w(1.0) == h100.tdp_w
        assert p.with_power_limit(400).power_w(1.0) == 400

    def test_limit_outside_the_board_range_is_rejected(self) -> None:
        with pytest.raises(PowerLimitError, match="200-700 W"):
            perf().with_power_limit(150)
        with pytest.raises(PowerLimitError):
            perf().with_power_limit(800)

    def test_cap_slows_prefill_more_than_decode(self) -> None:
        p = perf()
        capped = p.with_power_limit(350)
        prefill = capped.prefill_seconds(4096) / p.prefill_seconds(4096)
        decode = capped.decode_step_seconds(1, 512) / p.decode_step_seconds(1, 512)
        assert prefill > decode > 1.0
        assert p.with_power_limit(None).decode_step_seconds(1, 512) == p.decode_step_seconds(1, 512)


def test_cold_start_is_pull_plus_weight_load_plus_init() -> None:
    p = perf("llama-3-70b", "H100", 4)
    expected = 30.0 + MODEL_CATALOG["llama-3-70b"].weight_bytes / 4e9 + DEFAULT_CALIBRATION.engine_init_s
    assert p.cold_start_seconds(image_pull_s=30.0, load_gbps=4.0) == pytest.approx(expected)


def test_calibration_rejects_impossible_efficiencies() -> None:
    with pytest.raises(ValueError, match="prefill_mfu"):
        Calibration(prefill_mfu=1.5)


@pytest.mark.parametrize("product", sorted(GPU_PROFILES))
def test_every_catalogue_gpu_serves_an_8b_model_or_says_why(product: str) -> None:
    p = PerfModel(MODEL_CATALOG["llama-3-8b"], GPU_PROFILES[product])
    assert p.fits == (p.fit_problem() is None)
    if p.fits:
        assert p.decode_step_seconds(1, 100) > 0
