"""The scaling loop around a policy: one per service, the same in the operator and in the simulator.

Pure (no I/O, no wall clock): `ScalingLoop.tick(now, knobs, observation, cold_start_s)` returns the decision.
The operator's shell (controllers/shells/autoscaling.py) and the discrete-event simulator (simulator/cluster/)
both drive it; only what feeds it differs (the wall clock or virtual time, scraped vLLM metrics or simulated
engines' counters aggregated by the same `autoscaler.observation` functions, API objects or simulated
replicas), so a parity test can hold the two to the same decisions. What the loop owns:

- knobs: the policy `spec.scaling.policy` names and its tuning, built by a factory; a retuned knob keeps what
  the policy learned (its state is carried across);
- bounds: min/max replicas, scale-to-zero and stabilization from the spec, the decision interval, and the lead
  time from the measured cold start (the configured one until a replica has been measured); a decision
  outside the bounds is clamped into them;
- observation: one older than `STALE_AFTER_INTERVALS` decision intervals is stale (the policy holds);
- governor: each policy's own (rate limits, stabilization, flap guard), kept in the policy's state;
- state: when it is due to be saved (`STATE_EVERY_TICKS`), restoring it, and warming from stored history.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from autoscaler.capacity import EngineProfile
from autoscaler.decide import clamp
from autoscaler.forecast import EbbtideConfig, EbbtideForecaster
from autoscaler.policies import EbbtideForecast, NoScaling, ReactiveTargetTracking, make_policy
from autoscaler.types import (
    SLO,
    History,
    ScalingBounds,
    ScalingDecision,
    ScalingPolicy,
    ServiceObservation,
    StatefulPolicy,
    WarmablePolicy,
)

STATE_EVERY_TICKS = 10  # the policy's state is saved this often: a restart loses at most this many ticks
STALE_AFTER_INTERVALS = 2.0  # an observation older than this many decision intervals is not acted on


@dataclass(frozen=True)
class ScalingKnobs:
    """What is set for one service (spec.scaling, or a simulated service's config), read at every tick."""

    policy: str  # spec.scaling.policy, or a benchmark baseline the factory knows
    tuning: Mapping[str, float] = field(default_factory=dict)  # the policy's constructor knobs, e.g. {"risk": 0.1}
    bounds: ScalingBounds = field(default_factory=ScalingBounds)  # cold_start_s: assumed until one is measured
    slo: SLO = field(default_factory=SLO)
    profile: EngineProfile | None = None  # one replica's seed capacity, for the policies that plan with it


PolicyFactory = Callable[[ScalingKnobs], ScalingPolicy]


def crd_policies(*, forecast_error_window: int = 200) -> PolicyFactory:
    """The factory of the policies a user can select (`autoscaler.policies.POLICIES`)."""
    if forecast_error_window < 5:
        raise ValueError(f"forecast_error_window must be at least 5, got {forecast_error_window}")

    def build(knobs: ScalingKnobs) -> ScalingPolicy:
        kwargs: dict[str, Any] = dict(knobs.tuning)
        if knobs.policy in (EbbtideForecast.name, ReactiveTargetTracking.name):
            if knobs.profile is None:
                raise ValueError(f"policy {knobs.policy!r} needs the service's engine profile")
            kwargs["profile"] = knobs.profile
        if knobs.policy == EbbtideForecast.name:
            window = forecast_error_window
            kwargs["forecaster"] = EbbtideForecaster(EbbtideConfig(error_window=window, min_errors=min(30, window)))
        return make_policy(knobs.policy, **kwargs)

    return build


@dataclass(frozen=True)
class LoopDecision:
    """One tick's outcome: the decision and what it was made from."""

    decision: ScalingDecision
    observation: ServiceObservation  # as the policy saw it (marked stale when too old)
    bounds: ScalingBounds  # as applied: the lead time from the measured cold start
    save_state: bool  # the policy's state is due to be saved now


class ScalingLoop:
    """One service's loop; see the module docstring."""

    def __init__(self, factory: PolicyFactory) -> None:
        self._factory = factory
        self._policy: ScalingPolicy | None = None
        self._built_for: tuple[str, dict[str, float]] | None = None
        self.ticks = 0
        self.cold_start_s: float | None = None  # the latest measurement, kept while none is made

    @property
    def policy(self) -> ScalingPolicy:
        """The policy in force (after the first `configure` or `tick`)."""
        if self._policy is None:
            raise RuntimeError("the loop has no policy yet: configure it with the service's knobs first")
        return self._policy

    def configure(self, knobs: ScalingKnobs) -> ScalingPolicy:
        """Build the policy the knobs name, or keep the one in force when neither its name nor its tuning
        changed; a retuned policy of the same name starts from what the previous one learned."""
        key = (knobs.policy, dict(knobs.tuning))
        if self._policy is not None and self._built_for == key:
            return self._policy
        policy = self._factory(knobs)
        previous = self._policy
        if (
            previous is not None
            and self._built_for is not None
            and self._built_for[0] == knobs.policy
            and isinstance(previous, StatefulPolicy)
            and isinstance(policy, StatefulPolicy)
        ):
            policy.restore(previous.to_state())
        self._policy, self._built_for = policy, key
        return policy

    def bounds(self, knobs: ScalingKnobs) -> ScalingBounds:
        """The knobs' bounds with the measured cold start, once there is one."""
        if self.cold_start_s is None:
            return knobs.bounds
        return replace(knobs.bounds, cold_start_s=self.cold_start_s)

    def tick(
        self, now: float, knobs: ScalingKnobs, observation: ServiceObservation, cold_start_s: float | None = None
    ) -> LoopDecision:
        """One decision at `now` from the service's observation and, when the cluster measured one, the mean
        cold start of its replicas (creation to ready)."""
        policy = self.configure(knobs)
        if cold_start_s is not None and math.isfinite(cold_start_s) and cold_start_s > 0:
            self.cold_start_s = cold_start_s
        bounds = self.bounds(knobs)
        obs = observation
        if not obs.stale and now - obs.now > STALE_AFTER_INTERVALS * bounds.decision_interval_s:
            obs = replace(obs, stale=True)
        decision = policy.decide(obs, bounds, knobs.slo)
        if not isinstance(policy, NoScaling):  # `none` reports replicas someone else owns; it never moves them
            decision = _within(decision, bounds)
        self.ticks += 1
        due = self.ticks % STATE_EVERY_TICKS == 0 and isinstance(policy, StatefulPolicy)
        return LoopDecision(decision, obs, bounds, due)

    # --- state --------------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any] | None:
        """The policy's learned state as JSON-serialisable data (None: it keeps none)."""
        return self._policy.to_state() if isinstance(self._policy, StatefulPolicy) else None

    def restore(self, state: Mapping[str, Any]) -> bool:
        """Resume the policy from `to_state` (after a restart); False when it keeps no state."""
        if not isinstance(self._policy, StatefulPolicy):
            return False
        self._policy.restore(state)
        return True

    @property
    def learns_from_history(self) -> bool:
        """Whether the policy can catch up on stored history (`warm`)."""
        return isinstance(self._policy, WarmablePolicy)

    @property
    def observed_until(self) -> float | None:
        """The newest observation the policy has learned from (None: none, or it learns nothing)."""
        return self._policy.observed_until if isinstance(self._policy, WarmablePolicy) else None

    def warm(self, history: History, knobs: ScalingKnobs) -> int:
        """Let the policy learn from stored history newer than `observed_until`; returns the points taken."""
        if not isinstance(self._policy, WarmablePolicy):
            return 0
        return self._policy.warm(history, self.bounds(knobs))


def _within(decision: ScalingDecision, bounds: ScalingBounds) -> ScalingDecision:
    n = clamp(decision.replicas, bounds, allow_zero=True)
    if n == decision.replicas:
        return decision
    return replace(
        decision, replicas=n, reason=f"{decision.reason}; bounds {bounds.min_replicas}-{bounds.max_replicas}: {n}"
    )
