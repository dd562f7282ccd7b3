"""Forecasters: seasonality, calibrated intervals, joint indicators, sanitising, fallbacks and state."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from autoscaler.forecast import (
    FORECASTERS,
    GENERATION_TOKEN_RATE,
    PROMPT_TOKEN_RATE,
    REQUEST_RATE,
    EbbtideForecaster,
    Forecast,
    NaiveForecaster,
    PointHoltForecaster,
    forecaster_from_state,
    make_forecaster,
    replay,
)

DAY = 86400.0
STEP = 120.0
HORIZON = 240.0  # two ticks ahead, so every forecast has a realised value to score against


def diurnal(t: float) -> float:
    """Requests/s with a strong daily cycle (x5 peak to trough)."""
    return 10.0 * math.exp(0.8 * math.sin(2 * math.pi * t / DAY))


def rates(r: float) -> dict[str, float]:
    return {REQUEST_RATE: r, PROMPT_TOKEN_RATE: r * 500.0, GENERATION_TOKEN_RATE: r * 150.0}


@dataclass
class Trained:
    forecaster: EbbtideForecaster
    coverage_90: float
    median_ape: float
    scored: int


@pytest.fixture(scope="module")
def trained() -> Trained:
    """Seven days of noisy diurnal traffic; days 6-7 are scored against forecasts made 240 s earlier."""
    rng = np.random.default_rng(7)
    f = EbbtideForecaster()
    pending: dict[int, tuple[float, float, float]] = {}
    hits: list[bool] = []
    ape: list[float] = []
    for i in range(int(7 * DAY / STEP)):
        t = i * STEP
        r = diurnal(t) * math.exp(rng.normal(0.0, 0.1))
        f.observe(t, rates(r))
        if i in pending:
            lo, median, hi = pending.pop(i)
            hits.append(lo <= r <= hi)
            ape.append(abs(median - diurnal(t)) / diurnal(t))
        if t >= 5 * DAY:
            fc = f.forecast(HORIZON)
            pending[i + 2] = (fc.quantile(REQUEST_RATE, 0.05), fc.point(), fc.quantile(REQUEST_RATE, 0.95))
    return Trained(f, float(np.mean(hits)), float(np.mean(ape)), len(hits))


class TestEbbtide:
    def test_90_percent_interval_covers_about_90_percent(self, trained: Trained) -> None:
        assert trained.scored > 1400
        assert 0.85 <= trained.coverage_90 <= 0.95

    def test_median_tracks_the_daily_cycle(self, trained: Trained) -> None:
        assert trained.median_ape < 0.06  # noise is 10%; the median should sit near the noise-free curve

    def test_captures_daily_seasonality_hours_ahead(self, trained: Trained) -> None:
        f = trained.forecaster
        now = 7 * DAY - STEP
        for hours in (3, 6, 12):
            h = hours * 3600.0
            truth = diurnal(now + h)
            assert f.forecast(h).point() == pytest.approx(truth, rel=0.15), f"{hours} h ahead"
        # Persistence would be wrong by the whole swing: the forecast must not be flat.
        assert f.forecast(6 * 3600.0).point() > 1.5 * f.forecast(18 * 3600.0).point()

    def test_token_rates_move_with_requests(self, trained: Trained) -> None:
        fc = trained.forecaster.forecast(HORIZON)
        assert fc.samples is not None
        ratio = fc.samples[PROMPT_TOKEN_RATE] / fc.samples[REQUEST_RATE]
        assert np.median(ratio) == pytest.approx(500.0, rel=0.05)
        assert fc.point(GENERATION_TOKEN_RATE) / fc.point(REQUEST_RATE) == pytest.approx(150.0, rel=0.1)
        # Joint samples: the scenarios with most requests also carry most prompt tokens.
        assert np.corrcoef(fc.samples[REQUEST_RATE], fc.samples[PROMPT_TOKEN_RATE])[0, 1] > 0.9

    def test_quantiles_are_ordered(self, trained: Trained) -> None:
        for h in (0.0, 60.0, 3600.0, 86400.0):
            levels = trained.forecaster.forecast(h).quantiles
            for indicator in levels.values():
                qs = [indicator[q] for q in sorted(indicator)]
                assert qs == sorted(qs)

    def test_wider_further_ahead_when_deviations_persist(self) -> None:
        # A slowly wandering level (log random walk): the further ahead, the less is known.
        rng = np.random.default_rng(11)
        f = EbbtideForecaster()
        y = math.log(10.0)
        for i in range(3000):
            y += rng.normal(0.0, 0.03)
            f.observe(i * 30.0, rates(math.exp(y)))

        def log_width(fc: Forecast) -> float:
            return math.log(fc.quantile(REQUEST_RATE, 0.95) / fc.quantile(REQUEST_RATE, 0.05))

        # A random walk's spread grows like sqrt(horizon): sqrt(1800/60) is 5.5; ask for at least 2.
        assert log_width(f.forecast(1800.0)) > 2.0 * log_width(f.forecast(60.0))

    def test_follows_a_burst_and_widens(self) -> None:
        f = EbbtideForecaster()
        rng = np.random.default_rng(3)
        for i in range(2000):
            f.observe(i * 30.0, rates(10.0 * math.exp(rng.normal(0.0, 0.05))))
        calm = f.forecast(210.0)
        for i in range(2000, 2010):
            f.observe(i * 30.0, rates(30.0))
        burst = f.forecast(210.0)
        assert burst.point() > 1.5 * calm.point()
        assert burst.quantile(REQUEST_RATE, 0.99) > 25.0

    def test_a_quiet_first_tick_is_not_remembered(self) -> None:
        f = EbbtideForecaster()
        f.observe(30.0, rates(0.0))  # the service was idle when the operator started watching
        for i in range(2, 40):
            f.observe(30.0 * i, rates(40.0 * math.exp(0.05 * math.sin(i))))
        fc = f.forecast(240.0)
        assert 30.0 < fc.point() < 50.0
        assert fc.quantile(REQUEST_RATE, 0.99) < 2.0 * fc.point()  # the start-up jump is not spread to plan for

    def test_zero_traffic_forecasts_zero(self) -> None:
        f = EbbtideForecaster()
        for i in range(400):
            f.observe(i * 30.0, rates(0.0))
        assert f.forecast(210.0).quantile(REQUEST_RATE, 0.99) < 0.02

    def test_warming_up_says_so(self) -> None:
        f = EbbtideForecaster()
        assert f.forecast(60.0).fallback == "no observations yet"
        f.observe(0.0, rates(5.0))
        fc = f.forecast(60.0)
        assert fc.fallback is not None and fc.fallback.startswith("warming up")
        assert fc.quantile(REQUEST_RATE, 0.05) < 5.0 < fc.quantile(REQUEST_RATE, 0.95)

    def test_bad_inputs_are_sanitised(self) -> None:
        f = EbbtideForecaster()
        f.observe(0.0, rates(5.0))
        f.observe(30.0, {REQUEST_RATE: math.nan})
        f.observe(60.0, {REQUEST_RATE: -1.0})
        f.observe(90.0, {REQUEST_RATE: math.inf, PROMPT_TOKEN_RATE: 1.0})
        f.observe(math.nan, rates(5.0))
        f.observe(0.0, rates(50.0))  # out of order
        f.observe(120.0, {REQUEST_RATE: 5.0, PROMPT_TOKEN_RATE: math.nan, GENERATION_TOKEN_RATE: 750.0})
        assert f.rejected == 5
        fc = f.forecast(60.0)
        assert all(math.isfinite(v) for q in fc.quantiles.values() for v in q.values())
        assert fc.point() == pytest.approx(5.0, rel=0.2)

    def test_state_round_trips_through_json(self, trained: Trained) -> None:
        state = json.loads(json.dumps(trained.forecaster.to_state()))
        copy = forecaster_from_state(state)
        assert isinstance(copy, EbbtideForecaster)
        for h in (0.0, 210.0, 7200.0):
            assert copy.forecast(h).quantiles == trained.forecaster.forecast(h).quantiles
        # Both keep learning identically.
        t = 7 * DAY
        copy.observe(t, rates(12.0))
        original = EbbtideForecaster.from_state(state)
        original.observe(t, rates(12.0))
        assert copy.forecast(210.0).quantiles == original.forecast(210.0).quantiles


class TestBaselines:
    def test_point_holt_is_certain_and_follows_a_trend(self) -> None:
        f = PointHoltForecaster()
        for i in range(200):
            f.observe(i * 30.0, rates(1.0 + 0.01 * i))
        fc = f.forecast(300.0)
        assert len(set(fc.quantiles[REQUEST_RATE].values())) == 1
        assert fc.point() > 3.0  # last value was 2.99 and rising
        assert fc.point(PROMPT_TOKEN_RATE) == pytest.approx(fc.point() * 500.0, rel=0.01)

    def test_naive_repeats_the_last_value(self) -> None:
        f = NaiveForecaster()
        f.observe(0.0, rates(3.0))
        f.observe(30.0, rates(4.0))
        assert f.forecast(600.0).point() == 4.0

    @pytest.mark.parametrize("name", sorted(FORECASTERS))
    def test_registry_and_state(self, name: str) -> None:
        f = make_forecaster(name)
        assert f.forecast(60.0).fallback == "no observations yet"
        replay(f, [(i * 30.0, rates(2.0)) for i in range(50)])
        restored = forecaster_from_state(json.loads(json.dumps(f.to_state())))
        assert restored.name == name
        assert restored.forecast(120.0).quantiles == f.forecast(120.0).quantiles

    def test_unknown_names_and_states_are_rejected(self) -> None:
        with pytest.raises(ValueError, match="unknown forecaster"):
            make_forecaster("prophet")
        with pytest.raises(ValueError, match="cannot restore"):
            forecaster_from_state({"kind": "ebbtide", "version": 999})
