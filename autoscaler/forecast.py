"""Probabilistic demand forecasts: request rate and prompt/generation token rates over a lead time.

Pure and online (numpy only, no I/O, no wall clock): `observe(t, values)` once per tick, `forecast(horizon_s)`
when deciding. Forecasters share that tiny interface and a registry, `FORECASTERS`, keyed by name.

The Ebbtide model, in log space: rate = baseline (slow level + damped trend) + daily profile + hour-of-week
correction + deviation, where the deviation (a burst or a lull) fades at a rate learned per horizon and a
deviation that lasts hours becomes the new baseline. Token rates are request rate times tokens-per-request
ratios, so the three indicators move together. Uncertainty is the realised error of recent forecasts at each
standard horizon, kept jointly across indicators and split by regime (calm or burst), so a burst widens the
distribution while it lasts.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, ClassVar, Protocol

import numpy as np

REQUEST_RATE = "request_rate"
PROMPT_TOKEN_RATE = "prompt_token_rate"
GENERATION_TOKEN_RATE = "generation_token_rate"
INDICATORS = (REQUEST_RATE, PROMPT_TOKEN_RATE, GENERATION_TOKEN_RATE)
QUANTILE_LEVELS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)

STATE_VERSION = 1
NO_DATA = "no observations yet"  # Forecast.fallback of a forecaster that has seen nothing
DAY_S = 86400.0
WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class Forecast:
    """The distribution of each indicator's rate at `made_at + horizon_s`; `samples`, when present, are joint
    (entry i of every indicator is one scenario), so replicas needed for requests and tokens stay coherent."""

    made_at: float
    horizon_s: float
    quantiles: dict[str, dict[float, float]]
    samples: dict[str, np.ndarray] | None = None
    model: str = ""
    fallback: str | None = None  # why the forecaster used a simpler model this time, if it did

    def quantile(self, indicator: str, q: float) -> float:
        """Quantile q of an indicator: a stored level, else interpolated (from the samples outside the levels)."""
        levels = self.quantiles[indicator]
        if q in levels:
            return levels[q]
        qs = sorted(levels)
        if not qs[0] <= q <= qs[-1] and self.samples is not None and len(self.samples.get(indicator, ())):
            return float(sorted_quantiles(np.sort(self.samples[indicator]), (q,))[0])
        i = min(max(bisect.bisect_left(qs, q), 1), len(qs) - 1)
        lo, hi = qs[i - 1], qs[i]
        w = min(max((q - lo) / (hi - lo), 0.0), 1.0)
        return levels[lo] + w * (levels[hi] - levels[lo])

    def point(self, indicator: str = REQUEST_RATE) -> float:
        """The median."""
        return self.quantile(indicator, 0.5)


def sorted_quantiles(ordered: np.ndarray, levels: Iterable[float]) -> np.ndarray:
    """Quantiles (linear interpolation, numpy's default) of data already sorted along axis 0; much faster
    than np.quantile for the small arrays of a forecast."""
    n = ordered.shape[0]
    pos = np.asarray(tuple(levels), dtype=float) * (n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = pos - lo
    if ordered.ndim > 1:
        w = w[:, None]
    result: np.ndarray = ordered[lo] * (1.0 - w) + ordered[hi] * w
    return result


class Forecaster(Protocol):
    """An online forecaster of the demand indicators."""

    name: ClassVar[str]

    def observe(self, t: float, values: Mapping[str, float]) -> None:
        """Feed the rates measured over the interval ending at t; bad values are skipped, never raised."""
        ...

    def forecast(self, horizon_s: float) -> Forecast:
        """The distribution of the rates horizon_s after the last observation."""
        ...

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot; `forecaster_from_state` rebuilds the forecaster from it."""
        ...


def sanitize(values: Mapping[str, float]) -> dict[str, float]:
    """Keep the known indicators whose values are finite and non-negative."""
    out: dict[str, float] = {}
    for k in INDICATORS:
        v = values.get(k)
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f) and f >= 0.0:
            out[k] = f
    return out


def _point_forecast(
    t: float, horizon_s: float, point: Mapping[str, float], model: str, fallback: str | None
) -> Forecast:
    quantiles = {k: dict.fromkeys(QUANTILE_LEVELS, max(point.get(k, 0.0), 0.0)) for k in INDICATORS}
    return Forecast(t, horizon_s, quantiles, None, model, fallback)


class NaiveForecaster:
    """Persistence: the last observed rates, as a certain point."""

    name: ClassVar[str] = "naive"

    def __init__(self) -> None:
        self._t = 0.0
        self._last: dict[str, float] = {}

    def observe(self, t: float, values: Mapping[str, float]) -> None:
        """Remember the latest valid value of each indicator."""
        if not math.isfinite(t):
            return
        self._t = max(self._t, t)
        self._last.update(sanitize(values))

    def forecast(self, horizon_s: float) -> Forecast:
        """The last values, whatever the horizon."""
        note = None if self._last else NO_DATA
        return _point_forecast(self._t, horizon_s, self._last, self.name, note)

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot."""
        return {"kind": self.name, "version": STATE_VERSION, "t": self._t, "last": dict(self._last)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> NaiveForecaster:
        """Rebuild from `to_state`."""
        f = cls()
        f._t = float(state["t"])
        f._last = sanitize(state["last"])
        return f


@dataclass(frozen=True)
class HoltConfig:
    """Smoothing time constants of the point Holt forecaster."""

    level_tau_s: float = 120.0  # how quickly the level follows the data
    trend_tau_s: float = 900.0  # how quickly the slope follows changes of the level
    rate_floor: float = 0.05  # requests/s added before taking logs, so zero traffic is representable


def _log_ratio(num: float | None, den: float | None, floor: float) -> float | None:
    if num is None or den is None or den < floor:
        return None
    return math.log(max(num / den, 1e-3))


class PointHoltForecaster:
    """Holt's linear method on log request rate plus smoothed tokens per request: one number at the lead
    time, no distribution (the Dynamo-planner-style baseline)."""

    name: ClassVar[str] = "point-holt"

    def __init__(self, config: HoltConfig | None = None) -> None:
        self.config = config or HoltConfig()
        self._t: float | None = None
        self._level = 0.0
        self._trend = 0.0  # log units per second
        self._ratio: dict[str, float] = {}

    def observe(self, t: float, values: Mapping[str, float]) -> None:
        """Update level, slope and tokens-per-request ratios."""
        v = sanitize(values)
        if not math.isfinite(t) or REQUEST_RATE not in v or (self._t is not None and t <= self._t):
            return
        c = self.config
        y = math.log(v[REQUEST_RATE] + c.rate_floor)
        if self._t is None:
            self._level, self._trend = y, 0.0
        else:
            dt = t - self._t
            a = 1.0 - math.exp(-dt / c.level_tau_s)
            b = 1.0 - math.exp(-dt / c.trend_tau_s)
            predicted = self._level + self._trend * dt
            level = predicted + a * (y - predicted)
            self._trend += b * ((level - self._level) / dt - self._trend)
            self._level = level
        for k in (PROMPT_TOKEN_RATE, GENERATION_TOKEN_RATE):
            lr = _log_ratio(v.get(k), v.get(REQUEST_RATE), c.rate_floor)
            if lr is not None:
                old = self._ratio.get(k, lr)
                self._ratio[k] = old + 0.2 * (lr - old)
        self._t = t

    def forecast(self, horizon_s: float) -> Forecast:
        """Level plus slope times horizon, back-transformed."""
        if self._t is None:
            return _point_forecast(0.0, horizon_s, {}, self.name, NO_DATA)
        c = self.config
        rate = max(math.exp(self._level + self._trend * max(horizon_s, 0.0)) - c.rate_floor, 0.0)
        point = {REQUEST_RATE: rate}
        for k in (PROMPT_TOKEN_RATE, GENERATION_TOKEN_RATE):
            point[k] = rate * math.exp(self._ratio[k]) if k in self._ratio else 0.0
        return _point_forecast(self._t, horizon_s, point, self.name, None)

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot."""
        return {
            "kind": self.name,
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "t": self._t,
            "level": self._level,
            "trend": self._trend,
            "ratio": dict(self._ratio),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PointHoltForecaster:
        """Rebuild from `to_state`."""
        f = cls(HoltConfig(**state["config"]))
        f._t = None if state["t"] is None else float(state["t"])
        f._level = float(state["level"])
        f._trend = float(state["trend"])
        f._ratio = {k: float(x) for k, x in state["ratio"].items()}
        return f


@dataclass(frozen=True)
class EbbtideConfig:
    """Structure and memory of the Ebbtide forecaster; the defaults suit 10 s to 10 min ticks."""

    horizons_s: tuple[float, ...] = (30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 1800.0, 3600.0)
    day_bins: int = 96  # 15-minute daily profile
    week_bins: int = 168  # hour-of-week correction on top of the daily profile
    phase_offset_s: float = 0.0  # added to t before taking time of day (e.g. a timezone offset)
    day_learning: float = 0.35  # share of a daily bin's error corrected per day it is visited
    week_learning: float = 0.35  # the same per week, for the hour-of-week correction
    week_after_s: float = 3 * DAY_S  # the hour-of-week correction starts learning after this much data
    baseline_tau_s: float = DAY_S  # slow level under the seasonal profile (slower leaks the daily cycle)
    trend_tau_s: float = 6 * 3600.0  # how quickly the baseline's slope follows
    trend_damping_s: float = 3600.0  # the slope's effect levels off beyond this horizon
    deviation_tau_s: float = 45.0  # smoothing of the current deviation from the seasonal baseline
    persistence_tau_s: float = 900.0  # prior decay of a deviation (bursts fade), refined per horizon online
    ratio_tau_s: float = 1800.0  # tokens-per-request ratios follow over this time
    error_window: int = 200  # recent realised errors kept per horizon
    min_errors: int = 30  # fewer than this and the residuals are parametric
    burst_z: float = 2.5  # a deviation beyond this many robust sigmas is the burst regime
    prior_sigma: float = 0.3  # log-space spread assumed before the data say otherwise
    rate_floor: float = 0.05  # requests/s added before logs, so zero traffic is representable
    gap_s: float = 1800.0  # a longer silence restarts the short-term state
    young_obs: int = 10  # forecasts made before this many observations are not scored
    young_s: float = 3600.0  # for this long the baseline is a plain mean, not the slow average
    level_shift_s: float = 2 * 3600.0  # a one-signed burst lasting this long becomes the new baseline

    def __post_init__(self) -> None:
        if not self.horizons_s or any(h <= 0 for h in self.horizons_s):
            raise ValueError("horizons_s must be a non-empty tuple of positive seconds")
        if list(self.horizons_s) != sorted(self.horizons_s):
            raise ValueError("horizons_s must be ascending")
        if self.day_bins < 4 or self.week_bins < 7:
            raise ValueError("day_bins must be >= 4 and week_bins >= 7")
        if self.min_errors < 5 or self.error_window < self.min_errors:
            raise ValueError("error_window must be >= min_errors >= 5")


_NORMAL = NormalDist()
MAX_LOG_ERROR = math.log(4.0)


def _normal_scores(n: int) -> np.ndarray:
    return np.array([_NORMAL.inv_cdf((i + 0.5) / n) for i in range(n)])


_Z = _normal_scores(64)
# A fixed shuffle pairs the ratio scores with request-rate scores without correlating them, deterministically.
_Z_RATIO = _Z[np.argsort(np.sin(np.arange(64) * 12.9898) % 1.0)]


class _Profile:
    """A cyclic profile of `n` linearly interpolated bins over `period` seconds."""

    __slots__ = ("n", "period", "values", "width")

    def __init__(self, n: int, period: float, values: list[float] | None = None) -> None:
        self.n = n
        self.period = period
        self.width = period / n
        self.values = list(values) if values is not None else [0.0] * n

    def _where(self, t: float) -> tuple[int, int, float]:
        pos = (t % self.period) / self.width
        i0 = int(pos) % self.n
        return i0, (i0 + 1) % self.n, pos - math.floor(pos)

    def at(self, t: float) -> float:
        i0, i1, w = self._where(t)
        return self.values[i0] * (1.0 - w) + self.values[i1] * w

    def learn(self, t: float, error: float, rate: float) -> None:
        i0, i1, w = self._where(t)
        self.values[i0] += rate * (1.0 - w) * error
        self.values[i1] += rate * w * error

    def recenter(self) -> float:
        mean = sum(self.values) / self.n
        self.values = [v - mean for v in self.values]
        return mean


def _rate_per_visit(share: float, dt: float, width: float) -> float:
    # Learning so that a whole bin's worth of updates corrects `share` of its error, whatever the tick.
    return float(1.0 - (1.0 - share) ** (min(dt, width) / width))


class EbbtideForecaster:
    """Seasonal, trend and burst-aware forecaster of request and token rates whose uncertainty is the
    realised multi-step error of its own recent forecasts (see the module docstring for the model)."""

    name: ClassVar[str] = "ebbtide"

    def __init__(self, config: EbbtideConfig | None = None) -> None:
        c = self.config = config or EbbtideConfig()
        self._t: float | None = None
        self._n = 0
        self._dt = 0.0  # typical tick, smoothed
        self._base = 0.0
        self._base_mass = 0.0  # weight the baseline's average has accumulated (bias correction while young)
        self._trend = 0.0
        self._dev = 0.0
        self._scale = c.prior_sigma  # robust spread of deviations (mean absolute deviation x 1.25)
        self._ratio: dict[str, float] = {}
        self._ratio_scale: dict[str, float] = {}
        self._day = _Profile(c.day_bins, DAY_S)
        self._week = _Profile(c.week_bins, WEEK_S)
        self._seen_s = 0.0  # time under observation, to know when seasonal profiles carry information
        self._shift_s = 0.0  # how long the deviation has stayed beyond the burst bound with one sign
        self._shift_sign = 0.0
        # Per standard horizon: pending forecasts (target t, mean without deviation, deviation, ratio means,
        # regime), realised joint errors (request, prompt ratio, generation ratio, regime) and the
        # sufficient statistics of how much of a deviation persists at that horizon.
        self._pending: list[deque[tuple[float, float, float, float, float, float]]] = [deque() for _ in c.horizons_s]
        self._errors: list[deque[tuple[float, float, float, float]]] = [
            deque(maxlen=c.error_window) for _ in c.horizons_s
        ]
        self._persist_xy = [0.0] * len(c.horizons_s)
        self._persist_xx = [0.0] * len(c.horizons_s)
        self._error_arrays: dict[int, np.ndarray] = {}  # cache of _errors as arrays, dropped on append
        self._note: str | None = None
        self.rejected = 0  # observations dropped as non-finite, negative or out of order

    # --- model ---------------------------------------------------------------------------------------

    def _seasonal(self, t: float) -> float:
        tt = t + self.config.phase_offset_s
        return self._day.at(tt) + self._week.at(tt)

    def _trend_effect(self, h: float) -> float:
        tau = self.config.trend_damping_s
        return self._trend * tau * (1.0 - math.exp(-h / tau))

    def _persistence(self, k: int) -> float:
        h = self.config.horizons_s[k]
        prior = math.exp(-h / self.config.persistence_tau_s)
        # Prior worth a few deviations of typical size, so early estimates do not swing wildly.
        prior_xx = 4.0 * self._scale * self._scale
        phi = (self._persist_xy[k] + prior * prior_xx) / (self._persist_xx[k] + prior_xx)
        return min(max(phi, 0.0), 1.2)

    def _persistence_at(self, h: float) -> float:
        hs = self.config.horizons_s
        if h <= hs[0]:
            return 1.0 + (self._persistence(0) - 1.0) * (h / hs[0])
        if h >= hs[-1]:
            return self._persistence(len(hs) - 1) * math.exp(-(h - hs[-1]) / self.config.persistence_tau_s)
        k = next(i for i, x in enumerate(hs) if x >= h)
        w = (h - hs[k - 1]) / (hs[k] - hs[k - 1])
        return self._persistence(k - 1) * (1.0 - w) + self._persistence(k) * w

    def _regime(self) -> float:
        return 1.0 if abs(self._dev) > self.config.burst_z * self._scale else 0.0

    def _mean_without_dev(self, h: float) -> float:
        assert self._t is not None
        return self._base + self._trend_effect(h) + self._seasonal(self._t + h)

    # --- online update -------------------------------------------------------------------------------

    def observe(self, t: float, values: Mapping[str, float]) -> None:
        """Fold in the rates measured over the interval ending at t."""
        v = sanitize(values)
        if not math.isfinite(t) or REQUEST_RATE not in v or (self._t is not None and t <= self._t):
            self.rejected += 1
            return
        try:
            self._update(t, v)
            if not all(math.isfinite(x) for x in (self._base, self._trend, self._dev, self._scale)):
                raise FloatingPointError("non-finite model state")
        except (ArithmeticError, ValueError) as err:
            self._restart(t, v, f"model reset after a failed update ({err})")

    def _restart(self, t: float, v: Mapping[str, float], note: str) -> None:
        c = self.config
        self._base = math.log(v[REQUEST_RATE] + c.rate_floor)
        self._base_mass = 0.0
        self._trend = self._dev = self._shift_s = 0.0
        self._scale = c.prior_sigma
        self._day = _Profile(c.day_bins, DAY_S)
        self._week = _Profile(c.week_bins, WEEK_S)
        self._seen_s = 0.0
        for p in self._pending:
            p.clear()
        for e in self._errors:
            e.clear()
        self._error_arrays.clear()
        self._t = t
        self._n = 1
        self._note = note

    def _update(self, t: float, v: Mapping[str, float]) -> None:
        c = self.config
        y = math.log(v[REQUEST_RATE] + c.rate_floor)
        ratios = {
            k: _log_ratio(v.get(k), v.get(REQUEST_RATE), c.rate_floor)
            for k in (PROMPT_TOKEN_RATE, GENERATION_TOKEN_RATE)
        }
        if self._t is None:
            self._t, self._n, self._base = t, 1, y
            for k, lr in ratios.items():
                if lr is not None:
                    self._ratio[k] = lr
                    self._ratio_scale[k] = c.prior_sigma
            self._record_pending()
            return
        dt = t - self._t
        if dt > c.gap_s:
            # After a silence the short-term state and outstanding forecasts say nothing about now.
            for p in self._pending:
                p.clear()
            self._dev = 0.0
        self._dt = dt if self._n < 2 else self._dt + 0.1 * (min(dt, c.gap_s) - self._dt)
        self._score_pending(t, y, ratios)

        season = self._seasonal(t)
        old_base = self._base
        predicted = self._base + self._trend * dt
        # For its first hour the baseline is the plain mean of what was seen, so a quiet first tick is not
        # remembered for a whole baseline time constant; after that, the slow average that keeps the daily
        # cycle out of the level.
        a_base = 1.0 - math.exp(-dt / c.baseline_tau_s)
        self._base_mass = self._base_mass * (1.0 - a_base) + a_base
        if self._seen_s < c.young_s:
            a_base /= max(self._base_mass, a_base)
        self._base = predicted + a_base * (y - season - predicted)
        self._trend += (1.0 - math.exp(-dt / c.trend_tau_s)) * ((self._base - old_base) / dt - self._trend)

        deviation = y - self._base - season
        # Bursts must not leak into the seasonal profiles: learn from a clipped error.
        bound = 3.0 * self._scale
        clipped = min(max(deviation, -bound), bound)
        tt = t + c.phase_offset_s
        day_before = self._day.at(tt)
        self._day.learn(tt, clipped, _rate_per_visit(c.day_learning, dt, self._day.width))
        # The hour-of-week correction learns only what the daily profile did not just absorb.
        remaining = clipped - (self._day.at(tt) - day_before)
        if self._seen_s >= c.week_after_s:
            # Before the daily profile settles, its errors would be mistaken for weekday differences.
            self._week.learn(tt, remaining, _rate_per_visit(c.week_learning, dt, self._week.width))
        self._seen_s += min(dt, c.gap_s)
        if int(self._seen_s // DAY_S) != int((self._seen_s - min(dt, c.gap_s)) // DAY_S):
            # Keep the profiles centred so the baseline alone carries the level.
            self._base += self._day.recenter() + self._week.recenter()

        residual = y - self._base - self._seasonal(t)
        a_dev = 1.0 - math.exp(-dt / c.deviation_tau_s)
        self._dev += a_dev * (residual - self._dev)
        # A deviation that keeps its sign beyond the burst bound for long is a new level, not a burst.
        if abs(self._dev) > c.burst_z * self._scale and (self._shift_s == 0.0 or self._dev * self._shift_sign > 0):
            self._shift_s += dt
            self._shift_sign = 1.0 if self._dev > 0 else -1.0
        else:
            self._shift_s = 0.0
        if self._shift_s >= c.level_shift_s:
            self._base += self._dev
            self._dev = 0.0
            self._shift_s = 0.0
        # The deviation scale averages over hours once there is data (a plain mean before), so one burst
        # does not redefine what "unusual" means.
        a_scale = 1.0 - math.exp(-dt / (6 * 3600.0)) if self._n > 20 else 1.0 / (self._n + 1)
        # Clipped, so the jumps of a young model (or a level change) do not set the scale for hours.
        size = abs(residual) if self._n <= c.young_obs else min(abs(residual), 4.0 * self._scale)
        self._scale += a_scale * (1.25 * size - self._scale)
        self._scale = max(self._scale, 1e-3)

        a_ratio = 1.0 - math.exp(-dt / c.ratio_tau_s)
        for k, lr in ratios.items():
            if lr is None:
                continue
            if k not in self._ratio:
                self._ratio[k], self._ratio_scale[k] = lr, c.prior_sigma
                continue
            self._ratio_scale[k] += a_scale * (1.25 * abs(lr - self._ratio[k]) - self._ratio_scale[k])
            self._ratio[k] += a_ratio * (lr - self._ratio[k])

        self._t = t
        self._n += 1
        if self._note and self._n > 10:
            self._note = None
        self._record_pending()

    def _record_pending(self) -> None:
        assert self._t is not None
        if self._n < self.config.young_obs:
            return  # a model fitted to a handful of points would fill the error history with its start-up
        regime = self._regime()
        lp = self._ratio.get(PROMPT_TOKEN_RATE, math.nan)
        lg = self._ratio.get(GENERATION_TOKEN_RATE, math.nan)
        for k, h in enumerate(self.config.horizons_s):
            self._pending[k].append((self._t + h, self._mean_without_dev(h), self._dev, lp, lg, regime))

    def _score_pending(self, t: float, y: float, ratios: Mapping[str, float | None]) -> None:
        # The first observation at or after a forecast's target scores it, unless it came too late to count.
        tolerance = max(1.5 * self._dt, 1.0)
        for k, pending in enumerate(self._pending):
            while pending and pending[0][0] <= t:
                target, mean, dev, lp, lg, regime = pending.popleft()
                if t - target > tolerance:
                    continue
                realised_dev = y - mean
                w = 0.995  # persistence is re-estimated from roughly the last 200 scored forecasts
                self._persist_xy[k] = w * self._persist_xy[k] + realised_dev * dev
                self._persist_xx[k] = w * self._persist_xx[k] + dev * dev
                err = realised_dev - self._persistence(k) * dev
                ep = self._ratio_error(ratios.get(PROMPT_TOKEN_RATE), lp)
                eg = self._ratio_error(ratios.get(GENERATION_TOKEN_RATE), lg)
                self._errors[k].append((err, ep, eg, regime))
                self._error_arrays.pop(k, None)

    @staticmethod
    def _ratio_error(observed: float | None, predicted: float) -> float:
        return 0.0 if observed is None or not math.isfinite(predicted) else observed - predicted

    # --- forecasting ---------------------------------------------------------------------------------

    def _residuals(self, h: float) -> tuple[np.ndarray, str | None]:
        """Joint log-space errors (n x 3) for horizon h, and a note when they are parametric."""
        c = self.config
        hs = c.horizons_s
        k = next((i for i, x in enumerate(hs) if x >= h), len(hs) - 1)
        stretch = math.sqrt(h / hs[-1]) if h > hs[-1] else 1.0
        errors = self._errors[k]
        if len(errors) >= c.min_errors:
            arr = self._error_arrays.get(k)
            if arr is None:
                arr = self._error_arrays[k] = np.array(errors)
            same = arr[arr[:, 3] == self._regime()]
            chosen = same if len(same) >= c.min_errors else arr
            return chosen[:, :3] * stretch, None
        # Too few realised errors yet: a normal spread at the observed deviation scale, never below the prior
        # while the model is young.
        sigma = self._scale if self._n > 10 else max(self._scale, c.prior_sigma)
        sp = self._ratio_scale.get(PROMPT_TOKEN_RATE, c.prior_sigma)
        sg = self._ratio_scale.get(GENERATION_TOKEN_RATE, c.prior_sigma)
        arr = np.column_stack((_Z * sigma, _Z_RATIO * sp, _Z_RATIO[::-1] * sg)) * stretch
        return arr, f"warming up: {len(errors)} of {c.min_errors} realised errors at {hs[k]:g}s"

    def forecast(self, horizon_s: float) -> Forecast:
        """Joint samples and quantiles of the three rates at the horizon."""
        c = self.config
        h = max(float(horizon_s), 0.0) if math.isfinite(horizon_s) else 0.0
        if self._t is None:
            return _point_forecast(0.0, h, {}, self.name, NO_DATA)
        mean = self._mean_without_dev(h) + self._persistence_at(h) * self._dev
        errs, note = self._residuals(h)
        # A realised error beyond a factor of MAX_LOG_ERROR is a level change (which the level then tracks),
        # not spread to plan for: unclipped, one cold-start step from near zero makes quantiles explode.
        errs = np.clip(errs, -MAX_LOG_ERROR, MAX_LOG_ERROR)
        rate = np.maximum(np.exp(mean + errs[:, 0]) - c.rate_floor, 0.0)
        samples = {REQUEST_RATE: rate}
        for j, k in ((1, PROMPT_TOKEN_RATE), (2, GENERATION_TOKEN_RATE)):
            samples[k] = rate * np.exp(self._ratio[k] + errs[:, j]) if k in self._ratio else np.zeros_like(rate)
        table = sorted_quantiles(np.sort(np.column_stack([samples[k] for k in INDICATORS]), axis=0), QUANTILE_LEVELS)
        quantiles = {
            k: {q: float(table[i, j]) for i, q in enumerate(QUANTILE_LEVELS)} for j, k in enumerate(INDICATORS)
        }
        return Forecast(self._t, h, quantiles, samples, self.name, self._note or note)

    # --- persistence ---------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot (config, components, outstanding forecasts and recent errors)."""
        return {
            "kind": self.name,
            "version": STATE_VERSION,
            "config": {**asdict(self.config), "horizons_s": list(self.config.horizons_s)},
            "t": self._t,
            "n": self._n,
            "dt": self._dt,
            "base": self._base,
            "base_mass": self._base_mass,
            "trend": self._trend,
            "dev": self._dev,
            "scale": self._scale,
            "ratio": dict(self._ratio),
            "ratio_scale": dict(self._ratio_scale),
            "day": list(self._day.values),
            "week": list(self._week.values),
            "seen_s": self._seen_s,
            "shift": [self._shift_s, self._shift_sign],
            "pending": [[list(x) for x in p] for p in self._pending],
            "errors": [[list(x) for x in e] for e in self._errors],
            "persist_xy": list(self._persist_xy),
            "persist_xx": list(self._persist_xx),
            "note": self._note,
            "rejected": self.rejected,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> EbbtideForecaster:
        """Rebuild from `to_state`."""
        cfg = dict(state["config"])
        cfg["horizons_s"] = tuple(cfg["horizons_s"])
        f = cls(EbbtideConfig(**cfg))
        f._t = None if state["t"] is None else float(state["t"])
        f._n, f._dt = int(state["n"]), float(state["dt"])
        f._base, f._trend, f._dev, f._scale = (float(state[k]) for k in ("base", "trend", "dev", "scale"))
        f._base_mass = float(state.get("base_mass", 1.0))
        f._ratio = {k: float(x) for k, x in state["ratio"].items()}
        f._ratio_scale = {k: float(x) for k, x in state["ratio_scale"].items()}
        f._day = _Profile(f.config.day_bins, DAY_S, [float(x) for x in state["day"]])
        f._week = _Profile(f.config.week_bins, WEEK_S, [float(x) for x in state["week"]])
        f._seen_s = float(state["seen_s"])
        f._shift_s, f._shift_sign = (float(x) for x in state["shift"])
        for k, items in enumerate(state["pending"]):
            f._pending[k].extend((a, b, c, d, e, g) for a, b, c, d, e, g in items)
        for k, items in enumerate(state["errors"]):
            f._errors[k].extend((a, b, c, d) for a, b, c, d in items)
        f._persist_xy = [float(x) for x in state["persist_xy"]]
        f._persist_xx = [float(x) for x in state["persist_xx"]]
        f._note = state.get("note")
        f.rejected = int(state.get("rejected", 0))
        return f


FORECASTERS: dict[str, Callable[[], Forecaster]] = {
    EbbtideForecaster.name: EbbtideForecaster,
    PointHoltForecaster.name: PointHoltForecaster,
    NaiveForecaster.name: NaiveForecaster,
}

_FROM_STATE: dict[str, Callable[[Mapping[str, Any]], Forecaster]] = {
    EbbtideForecaster.name: EbbtideForecaster.from_state,
    PointHoltForecaster.name: PointHoltForecaster.from_state,
    NaiveForecaster.name: NaiveForecaster.from_state,
}


def make_forecaster(name: str) -> Forecaster:
    """A fresh forecaster by registry name; unknown names are a ValueError listing the known ones."""
    try:
        return FORECASTERS[name]()
    except KeyError:
        raise ValueError(f"unknown forecaster {name!r}; known: {', '.join(sorted(FORECASTERS))}") from None


def forecaster_from_state(state: Mapping[str, Any]) -> Forecaster:
    """Rebuild any registered forecaster from its `to_state` snapshot."""
    kind = state.get("kind")
    if kind not in _FROM_STATE or state.get("version") != STATE_VERSION:
        raise ValueError(f"cannot restore forecaster state of kind {kind!r} version {state.get('version')!r}")
    return _FROM_STATE[kind](state)


def replay(forecaster: Forecaster, points: Iterable[tuple[float, Mapping[str, float]]]) -> Forecaster:
    """Warm a forecaster from stored history (oldest first), e.g. after a restart without saved state."""
    for t, values in points:
        forecaster.observe(t, values)
    return forecaster


__all__ = [
    "FORECASTERS",
    "GENERATION_TOKEN_RATE",
    "INDICATORS",
    "NO_DATA",
    "PROMPT_TOKEN_RATE",
    "QUANTILE_LEVELS",
    "REQUEST_RATE",
    "EbbtideConfig",
    "EbbtideForecaster",
    "Forecast",
    "Forecaster",
    "HoltConfig",
    "NaiveForecaster",
    "PointHoltForecaster",
    "forecaster_from_state",
    "make_forecaster",
    "replay",
    "sanitize",
]
