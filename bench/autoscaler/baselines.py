"""Scaling policies only the benchmarks use: static peak, KPA-like, a point forecaster and the oracles.

They are not in the production registry (`autoscaler.policies.POLICIES`, keyed by the CRD's enum), since no
user can select them; `BASELINES` adds them to it for the benchmark. Built from the same helpers as the
production policies (governor, bounds, profiled capacity), so a comparison differs only in the policy.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from autoscaler.capacity import EngineProfile
from autoscaler.decide import Governor, GovernorConfig, floor_replicas, hold_decision
from autoscaler.forecast import (
    GENERATION_TOKEN_RATE,
    PROMPT_TOKEN_RATE,
    REQUEST_RATE,
    Forecaster,
    forecaster_from_state,
    make_forecaster,
)
from autoscaler.policies import (
    POLICIES,
    STALE,
    finish,
    is_idle,
    lead_horizons,
    lead_time,
    observed_rates,
    static_capacity,
)
from autoscaler.types import SLO, ScalingBounds, ScalingDecision, ScalingPolicy, ServiceObservation
from crds.reasons import Reason

LoadFunction = Callable[[float], Mapping[str, float]]  # time -> rate of each indicator (the oracle's future)


class StaticPeak:
    """Provision for the peak once and never move: the over-provisioned baseline."""

    name: ClassVar[str] = "static-peak"
    KNOB: ClassVar[str] = "replicas"

    def __init__(self, replicas: int) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be non-negative, got {replicas}")
        self.replicas = replicas

    def decide(self, obs: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision:
        """The fixed count, within the bounds."""
        n = min(max(self.replicas, floor_replicas(bounds)), bounds.max_replicas)
        return ScalingDecision(replicas=n, reason=f"static provisioning at {n} replicas")


class KPALike:
    """Knative-style concurrency autoscaler: 60 s stable and 6 s panic windows, panic at 200%, no scale-down
    in panic, scale-down at most halving; windows span observation times (ticks coarser than 6 s: the last)."""

    name: ClassVar[str] = "kpa"
    KNOB: ClassVar[str] = "target_utilization"

    def __init__(
        self,
        concurrency_per_replica: float = 32.0,
        target_utilization: float = 0.7,
        *,
        stable_window_s: float = 60.0,
        panic_window_s: float = 6.0,
        panic_threshold: float = 2.0,
        max_scale_down_rate: float = 2.0,
        governor: GovernorConfig | None = None,
    ) -> None:
        if concurrency_per_replica <= 0 or not 0 < target_utilization <= 1.0:
            raise ValueError("concurrency_per_replica must be > 0 and target_utilization in (0, 1]")
        self.target = concurrency_per_replica * target_utilization
        self.stable_window_s = stable_window_s
        self.panic_window_s = panic_window_s
        self.panic_threshold = panic_threshold
        self.max_scale_down_rate = max_scale_down_rate
        self._window: deque[tuple[float, float]] = deque()
        self._panic_until = -math.inf
        self._governor = Governor(governor or GovernorConfig(max_reversals_per_hour=10**6, scale_up_pods=10**6))

    def decide(self, obs: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision:
        """One KPA evaluation on in-flight requests (running + waiting)."""
        if obs.stale:
            self._governor.record(obs.now, obs.replicas, bounds.scale_down_stabilization_s)
            return hold_decision(obs, bounds, STALE, cause=Reason.METRICS_UNAVAILABLE)
        self._window.append((obs.now, obs.running + obs.queue_length))
        while self._window[0][0] <= obs.now - self.stable_window_s:
            self._window.popleft()
        stable = sum(c for _, c in self._window) / len(self._window)
        recent = [c for t, c in self._window if t > obs.now - self.panic_window_s] or [self._window[-1][1]]
        panic = sum(recent) / len(recent)
        want_stable = math.ceil(stable / self.target - 1e-9)
        want_panic = math.ceil(panic / self.target - 1e-9)
        if want_panic / max(obs.ready_replicas, 1) >= self.panic_threshold:
            self._panic_until = obs.now + self.stable_window_s
        if obs.now < self._panic_until:
            desired = max(want_panic, obs.replicas)
            reason = f"panic: {panic:.1f} in flight wants {want_panic}"
        else:
            desired = max(want_stable, math.ceil(obs.replicas / self.max_scale_down_rate))
            reason = f"stable: {stable:.1f} in flight over {self.stable_window_s:g}s wants {want_stable}"
        return finish(self._governor, obs, bounds, desired, reason, allow_zero=stable <= 0 and is_idle(obs))


class PointForecast:
    """Forecast a point over the lead time and act as if it were certain, plus headroom: the
    Dynamo-planner-style baseline (profiled capacity, a forecaster's median, no distribution)."""

    name: ClassVar[str] = "point-forecast"
    KNOB: ClassVar[str] = "headroom"

    def __init__(
        self,
        profile: EngineProfile,
        headroom: float = 0.1,
        *,
        forecaster: str | Forecaster = "point-holt",
        governor: GovernorConfig | None = None,
    ) -> None:
        if headroom < 0:
            raise ValueError(f"headroom must be non-negative, got {headroom}")
        self.profile = profile
        self.headroom = headroom
        self._capacity = static_capacity(profile)
        self._forecaster = make_forecaster(forecaster) if isinstance(forecaster, str) else forecaster
        self._governor = Governor(governor)

    def decide(self, obs: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision:
        """ceil((1 + headroom) x replicas for the forecast point), worst over the lead time."""
        if obs.stale:
            self._governor.record(obs.now, obs.replicas, bounds.scale_down_stabilization_s)
            return hold_decision(obs, bounds, STALE, cause=Reason.METRICS_UNAVAILABLE)
        self._forecaster.observe(obs.now, observed_rates(obs))
        forecasts = [self._forecaster.forecast(h) for h in lead_horizons(bounds)]
        points = [
            {k: fc.point(k) for k in (REQUEST_RATE, PROMPT_TOKEN_RATE, GENERATION_TOKEN_RATE)} for fc in forecasts
        ]
        if not all(math.isfinite(v) for p in points for v in p.values()):
            self._governor.record(obs.now, obs.replicas, bounds.scale_down_stabilization_s)
            return hold_decision(obs, bounds, "forecast failed: non-finite values", cause=Reason.FORECAST_FAILED)
        need = max(
            self._capacity.replicas_for(p[REQUEST_RATE], p[PROMPT_TOKEN_RATE], p[GENERATION_TOKEN_RATE]) for p in points
        )
        desired = math.ceil(need * (1.0 + self.headroom) - 1e-9)
        peak = max(p[REQUEST_RATE] for p in points)
        reason = f"forecast {peak:.2f} req/s over the next {lead_time(bounds):g}s, headroom {self.headroom:.0%}"
        note = forecasts[-1].fallback
        return finish(
            self._governor,
            obs,
            bounds,
            desired,
            reason + (f" ({note})" if note else ""),
            allow_zero=peak <= 0 and is_idle(obs),
            forecast_quantiles={"horizon_s": lead_time(bounds), "p50": peak},
            capacity_rps=self._capacity.request_rate,
        )

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot of the forecaster and the governor."""
        return {"forecaster": self._forecaster.to_state(), "governor": self._governor.to_state()}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume from `to_state` (e.g. after an operator restart)."""
        self._forecaster = forecaster_from_state(state["forecaster"])
        self._governor = Governor.from_state(state["governor"])


class Oracle:
    """Perfect foresight of the load the simulator replays, at the true capacity: the cost floor at full SLO
    attainment. Bounds apply; stabilization and rate limits do not."""

    name: ClassVar[str] = "oracle"
    KNOB: ClassVar[str] = "headroom"

    def __init__(
        self, load: LoadFunction, profile: EngineProfile, headroom: float = 0.0, *, resolution_s: float = 10.0
    ) -> None:
        if resolution_s <= 0:
            raise ValueError(f"resolution_s must be positive, got {resolution_s}")
        self.load = load
        self.headroom = headroom
        self.resolution_s = resolution_s
        self._capacity = static_capacity(profile)
        self._governor = Governor(GovernorConfig(stabilize=False, max_reversals_per_hour=10**6, scale_up_pods=10**6))

    def decide(self, obs: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision:
        """The peak need over [now, now + lead time]."""
        lead = lead_time(bounds)
        times = np.arange(obs.now, obs.now + lead + self.resolution_s / 2, self.resolution_s)
        need = 0.0
        peak = 0.0
        for t in times:
            v = self.load(float(t))
            r = v.get(REQUEST_RATE, 0.0)
            peak = max(peak, r)
            need = max(
                need, self._capacity.replicas_for(r, v.get(PROMPT_TOKEN_RATE, 0.0), v.get(GENERATION_TOKEN_RATE, 0.0))
            )
        desired = math.ceil(need * (1.0 + self.headroom) - 1e-9)
        return finish(
            self._governor,
            obs,
            bounds,
            desired,
            f"known peak {peak:.2f} req/s over the next {lead:g}s",
            allow_zero=need <= 0,
            forecast_quantiles={"horizon_s": lead, "p50": peak},
            capacity_rps=self._capacity.request_rate,
            risk=0.0,
        )


BASELINES: dict[str, Callable[..., ScalingPolicy]] = {
    **POLICIES,
    StaticPeak.name: StaticPeak,
    KPALike.name: KPALike,
    PointForecast.name: PointForecast,
    Oracle.name: Oracle,
}


def make_baseline(name: str, **kwargs: Any) -> ScalingPolicy:
    """A production policy or a benchmark baseline by name; unknown names are a ValueError."""
    try:
        factory = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown scaling policy {name!r}; known: {', '.join(sorted(BASELINES))}") from None
    return factory(**kwargs)
