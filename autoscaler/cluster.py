"""The whole cluster's demand: every service's request and token rates summed and forecast together.

Pure: fed each service's observations (time inside them), no I/O. One forecaster sees the cluster's totals once
per decision interval, so the spread of the forecast is the aggregate's own: bursts of different services that do
not coincide partly cancel, which summing every service's p99 would ignore. A service whose metrics go stale keeps
its last fresh rates for a few intervals (a scrape hiccup is not a demand drop), then leaves the total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.forecast import INDICATORS, NO_DATA, EbbtideForecaster, Forecaster, forecaster_from_state
from autoscaler.policies import observed_rates
from autoscaler.types import History, ServiceObservation

REPORTED = (0.1, 0.5, 0.9, 0.99)


@dataclass(frozen=True)
class _Latest:
    t: float  # when these rates were observed fresh
    rates: dict[str, float]
    lead_s: float  # the service's provisioning lead time


@dataclass(frozen=True)
class ClusterForecast:
    """The cluster's total demand now and its peak over the longest lead time, by quantile."""

    made_at: float
    horizon_s: float
    services: int  # services in the total
    carried: int  # of which this many are stale, counted at their last fresh rates
    observed: dict[str, float]  # indicator -> current total
    peak: dict[str, dict[float, float]]  # indicator -> quantile level -> peak over [now, now + horizon]
    note: str | None = None  # why the forecaster fell back to a simpler model, if it did


class ClusterDemand:
    """Sums the latest rates of every autoscaled service and forecasts the total once per interval."""

    def __init__(
        self, interval_s: float, *, forecaster: Forecaster | None = None, carry_intervals: float = 4.0
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.interval_s = interval_s
        self.carry_s = carry_intervals * interval_s
        self.forecaster = forecaster if forecaster is not None else EbbtideForecaster()
        self._latest: dict[str, _Latest] = {}
        self._fed_at: float | None = None
        self._last: ClusterForecast | None = None

    def observe(self, service: str, obs: ServiceObservation, lead_s: float) -> None:
        """Record a service's tick; a stale one keeps its previous fresh rates (and their age)."""
        prev = self._latest.get(service)
        if obs.stale:
            if prev is not None:
                self._latest[service] = _Latest(prev.t, prev.rates, lead_s)
            return
        rates = observed_rates(obs)
        if all(math.isfinite(v) and v >= 0 for v in rates.values()):
            self._latest[service] = _Latest(obs.now, rates, lead_s)

    def forget(self, service: str) -> None:
        """A deleted service, or one handed to another autoscaler, leaves the total at once."""
        self._latest.pop(service, None)

    def _counted(self, now: float) -> list[_Latest]:
        return [x for x in self._latest.values() if now - x.t <= self.carry_s]

    def totals(self, now: float) -> tuple[dict[str, float], int, int]:
        """The summed rates of the services fresh enough to count, how many count, and how many are carried."""
        counted = self._counted(now)
        totals = {k: sum(x.rates[k] for x in counted) for k in INDICATORS}
        carried = sum(1 for x in counted if now - x.t > 1.5 * self.interval_s)
        return totals, len(counted), carried

    def tick(self, now: float) -> ClusterForecast | None:
        """Feed the totals and forecast, at most once per interval however many services tick; the newest
        forecast otherwise. None until a service has been observed."""
        if self._fed_at is not None and now - self._fed_at < self.interval_s * 0.999:
            return self._last
        totals, services, carried = self.totals(now)
        if services == 0 and self._fed_at is None:
            return None
        self._fed_at = now
        self.forecaster.observe(now, totals)
        fallback = self._last.horizon_s if self._last else self.interval_s
        horizon = max((x.lead_s for x in self._counted(now)), default=fallback)
        forecasts = [self.forecaster.forecast(h) for h in (0.0, horizon / 2, horizon)]
        if any(fc.fallback == NO_DATA for fc in forecasts):
            return self._last
        peak = {k: {q: max(fc.quantile(k, q) for fc in forecasts) for q in REPORTED} for k in INDICATORS}
        if not all(math.isfinite(v) for levels in peak.values() for v in levels.values()):
            return self._last
        note = next((fc.fallback for fc in forecasts if fc.fallback), None)
        self._last = ClusterForecast(now, horizon, services, carried, totals, peak, note)
        return self._last

    @property
    def observed_until(self) -> float | None:
        """When the forecaster was last fed the totals (None: never)."""
        return self._fed_at

    def warm(self, history: History) -> int:
        """Feed stored totals newer than the last feed (e.g. those after the last saved state, read back after
        a restart); returns how many it took. The next forecast comes from the next tick."""
        taken = 0
        for t, totals in history:
            if (self._fed_at is not None and t <= self._fed_at) or any(k not in totals for k in INDICATORS):
                continue
            self.forecaster.observe(t, {k: totals[k] for k in INDICATORS})
            self._fed_at = t
            taken += 1
        return taken

    @property
    def last(self) -> ClusterForecast | None:
        """The newest forecast, if any."""
        return self._last

    def to_state(self) -> dict[str, Any]:
        """The forecaster's snapshot: the per-service rates are refilled within one interval after a restart."""
        return {"forecaster": self.forecaster.to_state(), "fed_at": self._fed_at}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume from `to_state` (e.g. after an operator restart or failover)."""
        self.forecaster = forecaster_from_state(state["forecaster"])
        fed = state.get("fed_at")
        self._fed_at = float(fed) if fed is not None else None
