"""Replica decisions under uncertainty, and the guard rails every policy shares.

Pure (no I/O, no wall clock). `choose_replicas` is the Bayesian step: the replica count that minimises
expected GPU cost plus SLO-violation penalty under the forecast distribution. `Governor` applies the user's
bounds, scale-down stabilization, rate limits, scale-to-zero gating and a bound on flapping.
`hold_decision` is the safe answer when inputs are missing.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from autoscaler.capacity import CapacityEstimate
from autoscaler.forecast import GENERATION_TOKEN_RATE, PROMPT_TOKEN_RATE, REQUEST_RATE, Forecast, sorted_quantiles
from autoscaler.observation import describe_scrape_failures
from autoscaler.types import ScalingBounds, ScalingDecision, ServiceObservation
from crds.reasons import Reason


@dataclass(frozen=True)
class CostModel:
    """Prices of the two mistakes; only their ratio matters."""

    replica_cost: float = 1.0  # one replica kept for one decision interval
    violation_penalty: float | None = None  # one replica's worth of demand served late; None: from the SLO

    def penalty(self, attainment: float) -> float:
        """The penalty to use: given, or the one whose critical ratio 1 - cost/penalty is the attainment."""
        if self.violation_penalty is not None:
            return self.violation_penalty
        q = min(max(attainment, 0.01), 0.9999)
        return self.replica_cost / (1.0 - q)

    def critical_ratio(self, attainment: float) -> float:
        """P(need <= n) at the optimum: a replica is worth adding while P(need > n) x penalty > cost."""
        return max(1.0 - self.replica_cost / self.penalty(attainment), 0.0)


@dataclass(frozen=True)
class Choice:
    """The replica count chosen under uncertainty, with what it cost and risked."""

    replicas: int
    risk: float  # probability that the demand needs more than `replicas`
    expected_cost: float
    target: float  # critical ratio 1 - c / p: the coverage probability the costs call for
    need: dict[str, float]  # quantiles of replicas needed, e.g. {"p50": 2.3, "p90": 3.1, "p99": 4.0}


def need_samples(forecasts: Sequence[Forecast], capacity: CapacityEstimate, backlog_rps: float = 0.0) -> np.ndarray:
    """Replicas needed (fractional) per scenario at the worst of the horizons: the binding dimension per joint
    sample (a scenario of long prompts loads prefill even at a usual request rate), and across horizons
    scenarios matched by rank (each quantile's peak, mildly conservative)."""
    peak: np.ndarray | None = None
    for fc in forecasts:
        if fc.samples is not None and len(fc.samples.get(REQUEST_RATE, ())):
            r = fc.samples[REQUEST_RATE] + backlog_rps
            p = fc.samples.get(PROMPT_TOKEN_RATE, np.zeros_like(r))
            g = fc.samples.get(GENERATION_TOKEN_RATE, np.zeros_like(r))
        else:
            levels = sorted(fc.quantiles[REQUEST_RATE])
            r = np.array([fc.quantiles[REQUEST_RATE][q] for q in levels]) + backlog_rps
            p = np.array([fc.quantiles[PROMPT_TOKEN_RATE][q] for q in levels])
            g = np.array([fc.quantiles[GENERATION_TOKEN_RATE][q] for q in levels])
        need = r / capacity.request_rate
        if capacity.prompt_token_rate:
            need = np.maximum(need, p / capacity.prompt_token_rate)
        if capacity.generation_token_rate:
            need = np.maximum(need, g / capacity.generation_token_rate)
        need = np.sort(need)
        if peak is None:
            peak = need
        elif len(peak) == len(need):
            peak = np.maximum(peak, need)
        else:
            grid = np.linspace(0.0, 1.0, max(len(peak), len(need)))
            peak = np.maximum(sorted_quantiles(peak, grid), sorted_quantiles(need, grid))
    if peak is None:
        raise ValueError("need_samples needs at least one forecast")
    return peak


def choose_replicas(need: np.ndarray, lo: int, hi: int, cost: CostModel, attainment: float) -> Choice:
    """Minimise E[n * c + p * (need - n)+] over integers lo..hi, ties to fewer replicas: the newsvendor
    optimum, the smallest n with P(need <= n) >= 1 - c / p."""
    if lo > hi:
        raise ValueError(f"empty replica range {lo}..{hi}")
    need = np.asarray(need, dtype=float)
    need = need[np.isfinite(need)]
    if need.size == 0:
        raise ValueError("no finite demand scenarios")
    penalty = cost.penalty(attainment)
    # Beyond these bounds the expected cost only grows, so the search is short even when hi is large.
    first = max(lo, min(hi, math.floor(float(need.min()))))
    last = max(first, min(hi, math.ceil(float(need.max()))))
    ns = np.arange(first, last + 1)
    shortfall = np.maximum(need[None, :] - ns[:, None], 0.0).mean(axis=1)
    expected = ns * cost.replica_cost + penalty * shortfall
    best = int(np.argmin(expected))
    n = int(ns[best])
    quantiles = sorted_quantiles(np.sort(need), (0.5, 0.9, 0.99))
    return Choice(
        replicas=n,
        risk=float(np.mean(need > n + 1e-9)),
        expected_cost=float(expected[best]),
        target=cost.critical_ratio(attainment),
        need={"p50": float(quantiles[0]), "p90": float(quantiles[1]), "p99": float(quantiles[2])},
    )


def floor_replicas(bounds: ScalingBounds) -> int:
    """The fewest replicas the bounds allow while serving: zero only with scale-to-zero."""
    return bounds.min_replicas if bounds.scale_to_zero else max(bounds.min_replicas, 1)


def clamp(n: int, bounds: ScalingBounds, *, allow_zero: bool = False) -> int:
    """n within [min, max]; zero only if scale-to-zero is on and the caller allows it now."""
    lo = floor_replicas(bounds)
    if lo == 0 and not allow_zero:
        lo = 1
    return max(min(n, bounds.max_replicas), lo)


@dataclass(frozen=True)
class GovernorConfig:
    """Guard rails on top of a policy's raw recommendation."""

    scale_up_percent: float = 100.0  # like HPA's default: at most double ...
    scale_up_pods: int = 4  # ... or add four, whichever is more, per decision
    max_reversals_per_hour: int = 6  # beyond this many up/down reversals, scale-downs look further back ...
    flap_window_s: float = 600.0  # ... taking the highest recommendation over this long
    stabilize: bool = True  # take the highest recommendation of the scale-down window (HPA behaviour)


class Governor:
    """Applies bounds, scale-down stabilization, scale-up rate limits and a flap bound, and says why."""

    def __init__(self, config: GovernorConfig | None = None) -> None:
        self.config = config or GovernorConfig()
        self._recommendations: deque[tuple[float, int]] = deque()
        self._changes: deque[tuple[float, int]] = deque()  # (t, +1 up / -1 down)

    def apply(
        self,
        now: float,
        current: int,
        recommended: int,
        bounds: ScalingBounds,
        *,
        allow_zero: bool = False,
    ) -> tuple[int, list[str]]:
        """The replica count to set, and notes on every rail that changed the recommendation."""
        c = self.config
        notes: list[str] = []
        zero_ok = allow_zero and bounds.scale_to_zero
        n = clamp(recommended, bounds, allow_zero=zero_ok)
        if n != recommended:
            if recommended == 0 and n > 0 and bounds.scale_to_zero:
                notes.append("not scaling to zero: demand is forecast")
            else:
                notes.append(f"clamped to [{floor_replicas(bounds)}, {bounds.max_replicas}]")
        window = bounds.scale_down_stabilization_s
        if not self._recommendations and not self._changes:
            # The replicas found in place count as a recommendation: no scale-down on the first look.
            self._recommendations.append((now, current))
        self._recommendations.append((now, n))
        self._prune(now, max(window, c.flap_window_s))

        target = n
        flapping = self._reversals() >= c.max_reversals_per_hour
        if flapping:
            # A longer window, not a freeze: flapping stays bounded, yet a real fall in demand still scales in.
            window = max(window, c.flap_window_s)
        if (c.stabilize or flapping) and target < current:
            highest = max(r for t, r in self._recommendations if t >= now - window)
            if highest > target:
                target = min(highest, current)
                why = f"{self._reversals()} reversals in the last hour, " if flapping else ""
                notes.append(f"scale-down stabilized at {target} ({why}highest of last {window:g}s)")
        if target > current:
            limit = max(math.ceil(current * (1.0 + c.scale_up_percent / 100.0)), current + c.scale_up_pods)
            if target > limit:
                notes.append(f"scale-up limited to {limit}")
                target = limit
        if target != current:
            self._changes.append((now, 1 if target > current else -1))
        return target, notes

    def record(self, now: float, replicas: int, window_s: float) -> None:
        """Count a held tick as a recommendation, so scale-down after an outage waits out the window."""
        self._recommendations.append((now, replicas))
        self._prune(now, max(window_s, self.config.flap_window_s))

    def _prune(self, now: float, window_s: float) -> None:
        while self._recommendations and self._recommendations[0][0] < now - window_s:
            self._recommendations.popleft()
        while self._changes and self._changes[0][0] < now - 3600.0:
            self._changes.popleft()

    def _reversals(self) -> int:
        dirs = [d for _, d in self._changes]
        return sum(1 for a, b in pairwise(dirs) if a != b)

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot."""
        return {
            "config": asdict(self.config),
            "recommendations": [list(x) for x in self._recommendations],
            "changes": [list(x) for x in self._changes],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Governor:
        """Rebuild from `to_state`."""
        g = cls(GovernorConfig(**state["config"]))
        g._recommendations.extend((float(t), int(n)) for t, n in state["recommendations"])
        g._changes.extend((float(t), int(d)) for t, d in state["changes"])
        return g


def hold_decision(
    obs: ServiceObservation,
    bounds: ScalingBounds,
    reason: str,
    *,
    cause: Reason,
    floor: int = 0,
    capacity_rps: float | None = None,
    slo_attainable: bool | None = None,
) -> ScalingDecision:
    """Keep the current replicas (within max, never down to zero) because an input is missing; `floor` still
    adds replicas when fresh metrics show the current ones overloaded. `cause` is the condition reason users see;
    when metrics are missing because engines failed to answer, the message says which and how."""
    if cause == Reason.METRICS_UNAVAILABLE and obs.scrape_failures:
        reason = f"{reason}: {describe_scrape_failures(obs.scrape_failures, obs.engines_asked)}"
    current = obs.replicas
    n = min(max(current, floor, bounds.min_replicas), bounds.max_replicas)
    if n > current:
        action = f"raising to {n} for the load already observed"
    elif n < current:
        action = f"lowering to max_replicas {n}"
    else:
        action = f"holding {n} replicas"
    return ScalingDecision(
        replicas=n,
        reason=f"degraded: {reason}; {action}",
        capacity_rps=capacity_rps,
        degraded=reason,
        degraded_reason=cause,
        slo_attainable=slo_attainable,
    )
