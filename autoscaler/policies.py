"""Scaling policies a user can select in `spec.scaling.policy`: forecast (Ebbtide's), reactive and none.

Each policy is a `ScalingPolicy`: it holds its own state (forecaster, capacity learner, governor, windows) and
its `decide(obs, bounds, slo)` is a pure function of that state and the observation — no I/O, no wall clock,
so the operator and the discrete-event simulator run the same code (both through `autoscaler.loop`).
`POLICIES` is keyed by exactly the CRD's enum; the baselines only benchmarks use live in
`bench/autoscaler/baselines.py`, built from the helpers here. Each class names its one sweepable knob in `KNOB`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, get_args

from autoscaler.capacity import CapacityConfig, CapacityEstimate, CapacityLearner, EngineProfile
from autoscaler.decide import (
    Choice,
    CostModel,
    Governor,
    GovernorConfig,
    choose_replicas,
    floor_replicas,
    hold_decision,
    need_samples,
)
from autoscaler.forecast import (
    GENERATION_TOKEN_RATE,
    INDICATORS,
    NO_DATA,
    PROMPT_TOKEN_RATE,
    REQUEST_RATE,
    Forecast,
    Forecaster,
    forecaster_from_state,
    make_forecaster,
)
from autoscaler.types import SLO, History, ScalingBounds, ScalingDecision, ScalingPolicy, ServiceObservation
from crds.llmservice import ScalingSpec
from crds.reasons import Reason

STALE = "metrics stale or missing"
STORE_DOWN = "history store unavailable"


def observed_rates(obs: ServiceObservation) -> dict[str, float]:
    """The forecast indicators of an observation."""
    return {
        REQUEST_RATE: obs.request_rate,
        PROMPT_TOKEN_RATE: obs.prompt_token_rate,
        GENERATION_TOKEN_RATE: obs.generation_token_rate,
    }


def static_capacity(profile: EngineProfile) -> CapacityEstimate:
    """The profile as a capacity estimate that never learns (what the baselines plan with)."""
    return CapacityEstimate(
        request_rate=profile.request_rate,
        prompt_token_rate=profile.prompt_token_rate,
        generation_token_rate=profile.generation_token_rate,
        scale=1.0,
        best_ttft_s=profile.ttft_s,
        best_itl_s=profile.itl_s,
        slo_attainable=None,
        learned_from=0,
        drift=False,
    )


def current_need(obs: ServiceObservation, cap: CapacityEstimate, drain_s: float) -> float:
    """Replicas the load observed right now needs, counting the queue as extra rate to drain within drain_s."""
    backlog = obs.queue_length / drain_s if drain_s > 0 else 0.0
    return cap.replicas_for(obs.request_rate + backlog, obs.prompt_token_rate, obs.generation_token_rate)


def is_idle(obs: ServiceObservation) -> bool:
    """Nothing arriving, queued or running."""
    return obs.request_rate <= 0 and obs.queue_length <= 0 and obs.running <= 0


def lead_time(bounds: ScalingBounds) -> float:
    """Seconds from deciding to add a replica until it serves, at the latest: cold start plus one interval."""
    return bounds.cold_start_s + bounds.decision_interval_s


def lead_horizons(bounds: ScalingBounds) -> list[float]:
    """The horizons a decision must cover, from now to the end of the lead time."""
    # Replicas removed now are gone at once and replicas added now arrive after the cold start, so the count
    # must cover demand from now to the end of the lead time.
    return sorted({0.0, bounds.cold_start_s / 2, bounds.cold_start_s, lead_time(bounds)})


def finish(
    governor: Governor,
    obs: ServiceObservation,
    bounds: ScalingBounds,
    recommended: int,
    reason: str,
    *,
    allow_zero: bool,
    **fields: Any,
) -> ScalingDecision:
    """The governed decision for a recommendation, its reason naming every guard rail that changed it."""
    if obs.replicas == 0 and not is_idle(obs):
        recommended = max(recommended, 1)  # a request is waiting at zero replicas: wake up
    n, notes = governor.apply(obs.now, obs.replicas, recommended, bounds, allow_zero=allow_zero)
    verdict = f"scale {obs.replicas} -> {n}" if n != obs.replicas else f"keep {n}"
    text = "; ".join([reason, *notes, verdict])
    return ScalingDecision(replicas=n, reason=text, **fields)


class NoScaling:
    """`policy: none`: replicas belong to kubectl scale, HPA or KEDA; report them unchanged."""

    name: ClassVar[str] = "none"
    KNOB: ClassVar[str] = ""

    def decide(self, obs: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision:
        """The current replicas, untouched."""
        return ScalingDecision(replicas=obs.replicas, reason="autoscaling off (policy none)")


class ReactiveTargetTracking:
    """HPA-like target tracking: desired = ceil(ready x utilisation / target) with a 10% tolerance, scale-down
    stabilization, scale-up at most doubling or adding four per decision."""

    name: ClassVar[str] = "reactive"
    KNOB: ClassVar[str] = "target_utilization"

    def __init__(
        self,
        profile: EngineProfile,
        target_utilization: float = 0.7,
        *,
        tolerance: float = 0.1,
        governor: GovernorConfig | None = None,
    ) -> None:
        if not 0 < target_utilization <= 1.5:
            raise ValueError(f"target_utilization must be in (0, 1.5], got {target_utilization}")
        self.profile = profile
        self.target_utilization = target_utilization
        self.tolerance = tolerance
        self._capacity = static_capacity(profile)
        self._governor = Governor(governor or GovernorConfig(max_reversals_per_hour=10**6))

    def decide(self, obs: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision:
        """One HPA evaluation."""
        if obs.stale:
            self._governor.record(obs.now, obs.replicas, bounds.scale_down_stabilization_s)
            return hold_decision(obs, bounds, STALE, cause=Reason.METRICS_UNAVAILABLE)
        load = current_need(obs, self._capacity, 0.0)  # in replicas at 100% utilisation
        if obs.ready_replicas > 0:
            utilization = load / obs.ready_replicas
            ratio = utilization / self.target_utilization
            if abs(ratio - 1.0) <= self.tolerance:
                desired = obs.replicas
            else:
                desired = math.ceil(obs.ready_replicas * ratio - 1e-9)
            reason = f"utilization {utilization:.0%} vs target {self.target_utilization:.0%}"
        else:
            desired = math.ceil(load / self.target_utilization - 1e-9) if obs.replicas == 0 else obs.replicas
            reason = "no ready replicas to measure"
        return finish(
            self._governor,
            obs,
            bounds,
            desired,
            reason,
            allow_zero=is_idle(obs),
            capacity_rps=self._capacity.request_rate,
        )


class EbbtideForecast:
    """Ebbtide's policy: joint forecasts over the lead time / learned capacity = replicas needed, then the
    newsvendor optimum at critical ratio = SLO attainment (or 1 - risk); missing inputs hold (degraded)."""

    name: ClassVar[str] = "forecast"
    KNOB: ClassVar[str] = "risk"

    def __init__(
        self,
        profile: EngineProfile,
        risk: float | None = None,
        *,
        forecaster: str | Forecaster = "ebbtide",
        cost: CostModel | None = None,
        capacity: CapacityConfig | None = None,
        governor: GovernorConfig | None = None,
        zero_rps: float = 0.02,
        smoothing_share: float = 0.5,
    ) -> None:
        if risk is not None and not 0 < risk < 1:
            raise ValueError(f"risk must be in (0, 1), got {risk}")
        if not 0 <= smoothing_share <= 1:
            raise ValueError(f"smoothing_share must be in [0, 1], got {smoothing_share}")
        self.risk = risk
        self.smoothing_share = smoothing_share
        self._recent: deque[tuple[float, dict[str, float]]] = deque()
        self.cost = cost or CostModel()
        self.zero_rps = zero_rps
        self._forecaster = make_forecaster(forecaster) if isinstance(forecaster, str) else forecaster
        self._capacity = CapacityLearner(profile, capacity)
        self._governor = Governor(governor)

    def decide(self, obs: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision:
        """Observe, forecast over the lead time, and choose replicas under uncertainty."""
        if obs.stale:
            self._governor.record(obs.now, obs.replicas, bounds.scale_down_stabilization_s)
            cap = self._capacity.estimate(slo)
            return hold_decision(
                obs,
                bounds,
                STALE,
                cause=Reason.METRICS_UNAVAILABLE,
                capacity_rps=cap.request_rate,
                slo_attainable=cap.slo_attainable,
            )
        self._capacity.observe(obs, slo)
        cap = self._capacity.estimate(slo)
        lead = lead_time(bounds)
        now_need = math.ceil(current_need(obs, cap, lead) - 1e-9)

        def degraded(reason: str, cause: Reason = Reason.FORECAST_FAILED) -> ScalingDecision:
            self._governor.record(obs.now, obs.replicas, bounds.scale_down_stabilization_s)
            return hold_decision(
                obs,
                bounds,
                reason,
                cause=cause,
                floor=now_need,
                capacity_rps=cap.request_rate,
                slo_attainable=cap.slo_attainable,
            )

        try:
            self._forecaster.observe(obs.now, self._smoothed(obs.now, observed_rates(obs), lead))
            forecasts = [self._forecaster.forecast(h) for h in lead_horizons(bounds)]
        except Exception as err:
            # Forecasters are plug-ins from a registry: whatever breaks inside one must hold replicas, not
            # crash the operator's reconcile loop or the simulator's run.
            return degraded(f"forecast failed: {type(err).__name__}: {err}")
        if not obs.history_available:
            return degraded(STORE_DOWN, Reason.HISTORY_UNAVAILABLE)
        if any(fc.fallback == NO_DATA for fc in forecasts):
            return degraded(f"forecast failed: {NO_DATA}")
        if not all(math.isfinite(v) for fc in forecasts for q in fc.quantiles.values() for v in q.values()):
            return degraded("forecast failed: non-finite values")

        attainment = 1.0 - self.risk if self.risk is not None else slo.attainment
        need = need_samples(forecasts, cap, backlog_rps=obs.queue_length / lead)
        lo = 0 if bounds.scale_to_zero else floor_replicas(bounds)
        choice = choose_replicas(need, lo, max(bounds.max_replicas, lo), self.cost, attainment)
        peak = self._peak_quantiles(forecasts)
        allow_zero = peak["p99"] <= self.zero_rps and is_idle(obs)
        return finish(
            self._governor,
            obs,
            bounds,
            choice.replicas,
            self._explain(choice, peak, cap, lead, forecasts),
            allow_zero=allow_zero,
            forecast_quantiles={
                "horizon_s": lead,
                **peak,
                **{f"replicas_{k}": v for k, v in choice.need.items()},
            },
            capacity_rps=cap.effective_request_rate(*self._mix(forecasts[-1])),
            risk=choice.risk,
            slo_attainable=cap.slo_attainable,
        )

    def _smoothed(self, now: float, rates: Mapping[str, float], lead_s: float) -> dict[str, float]:
        """Rates averaged over a share of the lead time: the level the capacity profile is about, since a
        single tick's arrival noise is already inside the profile's attainment margin, while a level that
        moves within the lead time must still show."""
        self._recent.append((now, dict(rates)))
        while len(self._recent) > 1 and self._recent[0][0] <= now - self.smoothing_share * lead_s:
            self._recent.popleft()
        n = len(self._recent)
        return {k: sum(r[k] for _, r in self._recent) / n for k in self._recent[-1][1]}

    @property
    def observed_until(self) -> float | None:
        """Time of the newest observation the forecaster was fed (None before the first)."""
        return self._recent[-1][0] if self._recent else None

    def warm(self, history: History, bounds: ScalingBounds) -> int:
        """Feed stored rates newer than `observed_until` to the forecaster, smoothed as `decide` does (e.g.
        the ticks between the last saved state and a restart); returns how many points it took."""
        lead = lead_time(bounds)
        taken = 0
        for t, rates in history:
            last = self.observed_until
            if (last is not None and t <= last) or any(k not in rates for k in INDICATORS):
                continue
            try:
                self._forecaster.observe(t, self._smoothed(t, {k: rates[k] for k in INDICATORS}, lead))
            except Exception:
                # The same plug-in guard as in decide: a bad point must not stop the restart.
                continue
            taken += 1
        return taken

    @staticmethod
    def _mix(fc: Forecast) -> tuple[float, float]:
        r = fc.point(REQUEST_RATE)
        if r <= 0:
            return 0.0, 0.0
        return fc.point(PROMPT_TOKEN_RATE) / r, fc.point(GENERATION_TOKEN_RATE) / r

    @staticmethod
    def _peak_quantiles(forecasts: list[Forecast]) -> dict[str, float]:
        out: dict[str, float] = {}
        for label, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            out[label] = max(fc.quantile(REQUEST_RATE, q) for fc in forecasts)
        out["prompt_tps_p90"] = max(fc.quantile(PROMPT_TOKEN_RATE, 0.9) for fc in forecasts)
        out["generation_tps_p90"] = max(fc.quantile(GENERATION_TOKEN_RATE, 0.9) for fc in forecasts)
        return out

    @staticmethod
    def _explain(
        choice: Choice, peak: Mapping[str, float], cap: CapacityEstimate, lead: float, forecasts: list[Forecast]
    ) -> str:
        parts = [
            f"peak demand over the next {lead:g}s p50 {peak['p50']:.2f} / p90 {peak['p90']:.2f} req/s",
            f"capacity {cap.request_rate:.2f} req/s per replica"
            + (f" (learned x{cap.scale:.2f}{', drifting' if cap.drift else ''})" if cap.learned_from else ""),
            f"replicas needed p50 {choice.need['p50']:.1f} / p99 {choice.need['p99']:.1f}",
            f"{choice.replicas} leaves risk {choice.risk:.1%} (cost-optimal coverage {choice.target:.1%})",
        ]
        fallback = next((fc.fallback for fc in forecasts if fc.fallback), None)
        if fallback:
            parts.append(fallback)
        if cap.slo_attainable is False:
            parts.append(
                f"SLO unattainable: best latency TTFT {cap.best_ttft_s or 0:.3g}s, ITL {cap.best_itl_s or 0:.3g}s"
            )
        return "; ".join(parts)

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot of forecaster, capacity learner, governor and the smoothing window."""
        return {
            "forecaster": self._forecaster.to_state(),
            "capacity": self._capacity.to_state(),
            "governor": self._governor.to_state(),
            "recent": [[t, rates] for t, rates in self._recent],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume from `to_state` (e.g. after an operator restart)."""
        self._forecaster = forecaster_from_state(state["forecaster"])
        self._capacity = CapacityLearner.from_state(state["capacity"])
        self._governor = Governor.from_state(state["governor"])
        self._recent = deque((float(t), {k: float(v) for k, v in r.items()}) for t, r in state.get("recent", []))


POLICIES: dict[str, Callable[..., ScalingPolicy]] = {
    EbbtideForecast.name: EbbtideForecast,
    ReactiveTargetTracking.name: ReactiveTargetTracking,
    NoScaling.name: NoScaling,
}
CRD_POLICIES: tuple[str, ...] = get_args(ScalingSpec.model_fields["policy"].annotation)  # spec.scaling.policy


def make_policy(name: str, **kwargs: Any) -> ScalingPolicy:
    """A policy by registry name with its constructor arguments; unknown names are a ValueError."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown scaling policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
    return factory(**kwargs)
