"""The whole cluster's forecast: every service's rates summed, forecast once per interval, stale ones carried."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np
import pytest

from autoscaler.cluster import ClusterDemand
from autoscaler.forecast import (
    GENERATION_TOKEN_RATE,
    PROMPT_TOKEN_RATE,
    REQUEST_RATE,
    EbbtideForecaster,
    Forecast,
)
from tests.unit.autoscaler.builders import obs

LEAD = 210.0


class CountingForecaster(EbbtideForecaster):
    """The real forecaster, remembering what it was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.fed: list[tuple[float, dict[str, float]]] = []

    def observe(self, t: float, values: Mapping[str, float]) -> None:
        self.fed.append((t, dict(values)))
        super().observe(t, values)


def test_the_total_is_the_sum_of_every_service() -> None:
    cluster = ClusterDemand(30.0)
    cluster.observe("a/chat", obs(0.0, rate=4.0), LEAD)
    cluster.observe("b/code", obs(0.0, rate=6.0), 90.0)
    fc = cluster.tick(0.0)
    assert fc is not None and fc.services == 2 and fc.carried == 0
    assert fc.observed == {REQUEST_RATE: 10.0, PROMPT_TOKEN_RATE: 5000.0, GENERATION_TOKEN_RATE: 1500.0}
    assert fc.horizon_s == LEAD  # the longest lead time of the services in the total


def test_fed_once_per_interval_however_many_services_tick() -> None:
    forecaster = CountingForecaster()
    cluster = ClusterDemand(30.0, forecaster=forecaster)
    for t in (0.0, 30.0, 60.0):
        for i, svc in enumerate(("a/x", "a/y", "b/z")):
            cluster.observe(svc, obs(t + i, rate=1.0 + i), LEAD)
            cluster.tick(t + i)
    assert [t for t, _ in forecaster.fed] == [0.0, 30.0, 60.0]
    # The first feed saw only the service that had ticked; later ones see all three.
    assert [v[REQUEST_RATE] for _, v in forecaster.fed] == [1.0, 6.0, 6.0]


def test_a_stale_service_is_carried_for_a_while_then_leaves_the_total() -> None:
    cluster = ClusterDemand(30.0)
    for t in range(0, 301, 30):
        cluster.observe("a/steady", obs(float(t), rate=5.0), LEAD)
        cluster.observe("a/flaky", obs(float(t), rate=3.0, stale=t >= 60), LEAD)
        fc = cluster.tick(float(t))
        assert fc is not None
        if t == 90:
            assert fc.observed[REQUEST_RATE] == 8.0 and fc.carried == 1  # a scrape hiccup is not a demand drop
    assert fc.observed[REQUEST_RATE] == 5.0 and fc.services == 1 and fc.carried == 0


def test_a_forgotten_service_leaves_at_once_and_bad_rates_are_not_summed() -> None:
    cluster = ClusterDemand(30.0)
    cluster.observe("a/x", obs(0.0, rate=5.0), LEAD)
    cluster.observe("a/y", obs(0.0, rate=2.0), LEAD)
    cluster.observe("a/y", obs(10.0, rate=math.nan), LEAD)  # an unusable scrape keeps the last good rates
    assert cluster.totals(10.0)[0][REQUEST_RATE] == 7.0
    cluster.forget("a/y")
    assert cluster.totals(10.0)[0][REQUEST_RATE] == 5.0


def test_nothing_observed_is_no_forecast() -> None:
    assert ClusterDemand(30.0).tick(0.0) is None
    with pytest.raises(ValueError, match="interval_s"):
        ClusterDemand(0.0)


def test_the_forecast_follows_a_cluster_wide_step_with_ordered_quantiles() -> None:
    cluster = ClusterDemand(30.0)
    rng = np.random.default_rng(3)
    for k in range(600):
        t = 30.0 * k
        level = 10.0 if k < 400 else 20.0
        for svc in ("a/x", "b/y"):
            cluster.observe(svc, obs(t, rate=level / 2 * float(rng.lognormal(0.0, 0.1))), LEAD)
        fc = cluster.tick(t)
    assert fc is not None and fc.note is None
    r = fc.peak[REQUEST_RATE]
    assert r[0.1] <= r[0.5] <= r[0.9] <= r[0.99]
    assert 17.0 < r[0.5] < 24.0 and r[0.99] < 40.0


def _spread(fc: Forecast) -> float:
    return fc.quantile(REQUEST_RATE, 0.99) - fc.quantile(REQUEST_RATE, 0.5)


def test_independent_bursts_partly_cancel_in_the_cluster_spread() -> None:
    """Why one forecaster of the total and not a sum of per-service forecasts: the sum of every service's p99
    plans for all of them bursting at once."""
    rng = np.random.default_rng(11)
    services = [EbbtideForecaster() for _ in range(4)]
    cluster = ClusterDemand(30.0)
    for k in range(400):
        t = 30.0 * k
        for i, f in enumerate(services):
            rate = 5.0 * float(rng.lognormal(0.0, 0.3))
            f.observe(t, {REQUEST_RATE: rate, PROMPT_TOKEN_RATE: rate * 500, GENERATION_TOKEN_RATE: rate * 150})
            cluster.observe(f"ns/s{i}", obs(t, rate=rate), LEAD)
        cluster.tick(t)
    summed_tails = sum(_spread(f.forecast(LEAD)) for f in services)
    own = _spread(cluster.forecaster.forecast(LEAD))
    assert own < 0.75 * summed_tails, (own, summed_tails)


def test_state_survives_a_restart() -> None:
    first = ClusterDemand(30.0)
    for k in range(100):
        first.observe("a/x", obs(30.0 * k, rate=5.0 + k % 4), LEAD)
        first.tick(30.0 * k)
    second = ClusterDemand(30.0)
    second.restore(json.loads(json.dumps(first.to_state())))
    for c in (first, second):
        c.observe("a/x", obs(3000.0, rate=6.0), LEAD)
    a, b = first.tick(3000.0), second.tick(3000.0)
    assert a is not None and b is not None and a.peak == b.peak
