"""Trace readers and ServeGen synthesis: parsing, rates, burstiness, seeded determinism."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from simulator.traces import (
    DATA_ENV,
    SLICES,
    LengthSampler,
    RateSeries,
    ServeGenTrace,
    Trace,
    TraceDataMissing,
    azure_length_sampler,
    data_dir,
    load_azure,
    load_servegen,
    load_trace,
)

# These check the full public traces (row counts, 14 days); the shipped slices cover the same code paths.
needs_full_traces = pytest.mark.skipif(
    not os.environ.get(DATA_ENV),
    reason=f"needs the full public traces: {DATA_ENV} is not set (`make data` fetches them; README, section Data)",
)


def one_client(family: int, shape: float, rate: float, windows: int = 1) -> ServeGenTrace:
    """A single-client window table (family 1 = Gamma, 2 = Weibull)."""
    return ServeGenTrace(
        "test",
        600.0,
        ("chunk-0",),
        np.full((1, windows), rate),
        np.full((1, windows), family, dtype=np.int8),
        np.full((1, windows), shape),
    )


def gap_cv(arrivals: np.ndarray) -> float:
    gaps = np.diff(arrivals)
    return float(gaps.std() / gaps.mean())


LENGTHS = LengthSampler(np.array([100, 200, 300]), np.array([10, 20, 30]))


@pytest.fixture(scope="module")
def m_mid() -> ServeGenTrace:
    return load_servegen("m-mid")


def data_rows(path: str) -> int:
    """Non-empty lines of a shipped slice, less its header (Azure files have one, ServeGen chunks none)."""
    lines = [ln for ln in (SLICES / path).read_text().splitlines() if ln.strip()]
    return len(lines) - (1 if lines[0].startswith("TIMESTAMP") else 0)


class TestDataFolder:
    def test_without_the_variable_the_full_traces_are_refused_by_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(DATA_ENV, raising=False)
        with pytest.raises(TraceDataMissing, match=DATA_ENV):
            data_dir()
        with pytest.raises(TraceDataMissing, match="make data"):
            load_azure("conv")

    def test_a_variable_naming_no_folder_is_refused(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv(DATA_ENV, str(tmp_path / "absent"))
        with pytest.raises(TraceDataMissing, match="is not a folder"):
            data_dir()
        monkeypatch.setenv(DATA_ENV, str(tmp_path))
        assert data_dir() == tmp_path


class TestAzureSlice:
    def test_conv_slice_parses_every_row_with_relative_sorted_arrivals(self) -> None:
        trace = load_azure("conv", SLICES)
        assert len(trace) == data_rows("azure-llm-2023/AzureLLMInferenceTrace_conv.csv")
        assert trace.arrival_s[0] == 0.0
        assert np.all(np.diff(trace.arrival_s) >= 0)
        assert 540 < trace.duration_s <= 600  # the slice is the trace's busiest ten minutes
        assert trace.prompt_tokens.min() >= 1 and trace.output_tokens.min() >= 1


class TestAzure:
    @needs_full_traces
    def test_conv_parses_every_row_with_relative_sorted_arrivals(self) -> None:
        trace = load_azure("conv")
        assert len(trace) == 19366
        assert trace.arrival_s[0] == 0.0
        assert np.all(np.diff(trace.arrival_s) >= 0)
        assert 3000 < trace.duration_s < 3700  # one hour of production traffic
        assert trace.prompt_tokens.min() >= 1 and trace.output_tokens.min() >= 1

    @needs_full_traces
    def test_code_trace_and_its_first_gap(self) -> None:
        trace = load_azure("code")
        assert len(trace) == 8819
        # 18:17:03.9799600 -> 18:17:04.0319600 in the file
        assert trace.arrival_s[1] == pytest.approx(0.052, abs=1e-6)

    def test_unknown_kind_is_refused(self) -> None:
        with pytest.raises(ValueError, match="conv"):
            load_azure("chat")


class TestTraceViews:
    def trace(self) -> Trace:
        return Trace("t", np.array([0.0, 1.0, 2.5, 4.0]), np.array([5, 6, 7, 8]), np.array([1, 2, 3, 4]), 5.0)

    def test_window_rebases_and_cuts(self) -> None:
        w = self.trace().window(1.0, 3.0)
        assert list(w.arrival_s) == [0.0, 1.5]
        assert list(w.prompt_tokens) == [6, 7]
        assert w.duration_s == 2.0

    def test_compression_divides_time(self) -> None:
        c = self.trace().compressed(2.0)
        assert list(c.arrival_s) == [0.0, 0.5, 1.25, 2.0]
        assert c.duration_s == 2.5
        with pytest.raises(ValueError):
            self.trace().compressed(0)

    def test_rate_series_counts_per_bucket(self) -> None:
        rs = self.trace().rate_series(2.0)
        assert list(rs.rates) == [1.0, 0.5, 0.5]

    def test_rate_series_mean_over_is_time_weighted(self) -> None:
        rs = RateSeries("r", 10.0, np.array([1.0, 3.0]))
        assert rs.mean_over(0, 20) == pytest.approx(2.0)
        assert rs.mean_over(5, 15) == pytest.approx(2.0)
        assert rs.at(12.0) == 3.0 and rs.at(25.0) == 0.0

    def test_requests_iterates_in_order(self) -> None:
        reqs = list(self.trace().requests())
        assert [r.index for r in reqs] == [0, 1, 2, 3]
        assert reqs[2].arrival_s == 2.5 and reqs[2].prompt_tokens == 7


class TestServeGenSynthesis:
    @pytest.mark.parametrize("rate", [0.37, 5.0, 42.5])
    def test_count_matches_window_rate(self, rate: float) -> None:
        table = one_client(1, 0.8, rate, windows=20)
        trace = table.synthesize(0, table.duration_s, seed=3, lengths=LENGTHS)
        expected = rate * table.duration_s
        # Stochastic rounding: each window is off by less than one request
        assert abs(len(trace) - expected) < 20
        per_window = np.bincount((trace.arrival_s // 600).astype(int), minlength=20)
        assert np.all(np.abs(per_window - rate * 600) < 1)

    @pytest.mark.parametrize(
        ("family", "shape", "cv"),
        [
            (1, 1.0, 1.0),  # Gamma(1) = exponential: Poisson arrivals
            (1, 0.25, 2.0),  # Gamma CV = 1 / sqrt(k)
            (2, 0.5, math.sqrt(math.gamma(5) / math.gamma(3) ** 2 - 1)),  # Weibull CV from Γ(1+2/k), Γ(1+1/k)
        ],
    )
    def test_inter_arrival_burstiness_follows_the_shape(self, family: int, shape: float, cv: float) -> None:
        table = one_client(family, shape, 40.0, windows=2)
        trace = table.synthesize(0, 600, seed=11, lengths=LENGTHS)
        assert gap_cv(trace.arrival_s) == pytest.approx(cv, rel=0.1)

    def test_same_seed_same_arrivals_other_seed_differs(self) -> None:
        table = one_client(2, 0.4, 3.0, windows=3)
        a = table.synthesize(0, 1800, seed=7, lengths=LENGTHS)
        b = table.synthesize(0, 1800, seed=7, lengths=LENGTHS)
        c = table.synthesize(0, 1800, seed=8, lengths=LENGTHS)
        np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
        np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
        assert not np.array_equal(a.arrival_s[:100], c.arrival_s[:100])

    def test_a_window_does_not_depend_on_the_span_asked_for(self) -> None:
        table = one_client(1, 0.6, 2.0, windows=3)
        whole = table.synthesize(0, 1800, seed=5, lengths=LENGTHS)
        tail = table.synthesize(600, 1800, seed=5, lengths=LENGTHS)
        np.testing.assert_allclose(whole.window(600, 1800).arrival_s, tail.arrival_s)

    def test_rate_scale_scales_counts_and_chunks_cover_the_span(self) -> None:
        table = one_client(1, 1.0, 10.0, windows=6)
        scaled = table.synthesize(0, 3600, seed=1, rate_scale=0.1, lengths=LENGTHS)
        assert abs(len(scaled) - 3600) < 6
        chunks = list(table.synthesize_chunks(0, 3600, seed=1, chunk_s=1200, rate_scale=0.1, lengths=LENGTHS))
        assert [t for t, _ in chunks] == [0, 1200, 2400]
        joined = np.concatenate([tr.arrival_s + t for t, tr in chunks])
        np.testing.assert_allclose(joined, scaled.arrival_s)

    def test_lengths_come_from_the_sampler_jointly(self) -> None:
        table = one_client(1, 1.0, 5.0)
        trace = table.synthesize(0, 600, seed=2, lengths=LENGTHS)
        pairs = set(zip(trace.prompt_tokens.tolist(), trace.output_tokens.tolist(), strict=True))
        assert pairs <= {(100, 10), (200, 20), (300, 30)}


class TestServeGenSlice:
    def test_one_client_over_two_days(self) -> None:
        table = load_servegen("m-mid", SLICES)
        assert table.clients == ("chunk-36",)
        assert table.rate_rps.shape == (1, data_rows("servegen/m-mid/chunk-36-trace.csv"))
        assert table.window_s == 600.0 and table.duration_s == 2 * 86400
        assert set(np.unique(table.dist)) == {1, 2}  # this client's windows are fitted by both families

    def test_synthesized_arrivals_follow_the_window_rates(self) -> None:
        table = load_servegen("m-mid", SLICES)
        start, end = 86400.0, 86400.0 + 3 * 600
        trace = table.synthesize(start, end, seed=0, rate_scale=0.05, lengths=azure_length_sampler("conv", SLICES))
        series = table.rate_series(0.05)
        for w in range(3):
            got = np.count_nonzero((trace.arrival_s >= w * 600) & (trace.arrival_s < (w + 1) * 600)) / 600
            assert got == pytest.approx(series.at(start + w * 600), rel=0.02)


@needs_full_traces
class TestServeGenMMid:
    def test_table_has_every_client_and_fourteen_days(self, m_mid: ServeGenTrace) -> None:
        assert m_mid.rate_rps.shape == (109, 2016)
        assert m_mid.window_s == 600.0
        assert m_mid.duration_s == 14 * 86400
        assert set(np.unique(m_mid.dist)) <= {0, 1, 2}
        assert np.all(m_mid.rate_rps[m_mid.dist == 0] == 0)

    def test_synthesized_service_matches_the_aggregate_rate_series(self, m_mid: ServeGenTrace) -> None:
        start, end = 86400.0, 86400.0 + 3 * 600
        trace = m_mid.synthesize(start, end, seed=0, rate_scale=0.05)
        series = m_mid.rate_series(0.05)
        for w in range(3):
            got = np.count_nonzero((trace.arrival_s >= w * 600) & (trace.arrival_s < (w + 1) * 600)) / 600
            assert got == pytest.approx(series.at(start + w * 600), rel=0.02)

    def test_lengths_default_to_the_azure_conversation_trace(self, m_mid: ServeGenTrace) -> None:
        trace = m_mid.synthesize(0, 600, seed=0, rate_scale=0.05)
        azure = load_azure("conv")
        assert set(trace.prompt_tokens.tolist()) <= set(azure.prompt_tokens.tolist())


class TestLoadTrace:
    def test_cli_names_read_the_given_folder(self) -> None:
        conv = load_trace("azure-conv", duration_s=60, root=SLICES)
        assert len(conv) > 0 and conv.arrival_s.max() < 60
        sg = load_trace("servegen-m-mid", start_s=0, duration_s=600, rate_scale=0.01, seed=1, root=SLICES)
        assert sg.name == "servegen-m-mid" and sg.duration_s == 600 and len(sg) > 0
        azure = load_azure("conv", SLICES)
        assert set(sg.prompt_tokens.tolist()) <= set(azure.prompt_tokens.tolist())

    @needs_full_traces
    def test_cli_names(self) -> None:
        assert len(load_trace("azure-code", duration_s=60)) > 0
        sg = load_trace("servegen-m-mid", start_s=0, duration_s=600, rate_scale=0.01, seed=1)
        assert sg.name == "servegen-m-mid" and sg.duration_s == 600

    def test_unknown_name_lists_the_known_ones(self) -> None:
        with pytest.raises(ValueError, match="azure-conv"):
            load_trace("nope")
