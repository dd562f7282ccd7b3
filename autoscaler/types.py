"""Typed snapshots the scaling policies read and the decisions they return.

This is the seam between the autoscaler's pure cores and their two shells: the live operator and the
discrete-event cluster simulator. Time is a float of seconds supplied by the caller (virtual or wall).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from crds.reasons import Reason


@dataclass(frozen=True)
class SLO:
    """Latency targets of one service and the share of requests that must meet them."""

    ttft_s: float = 2.0  # time to first token
    itl_s: float = 0.1  # inter-token latency (time per output token)
    attainment: float = 0.99  # target share of requests meeting both


@dataclass(frozen=True)
class ScrapeFailure:
    """Why one engine's metrics could not be read: the URL asked, the HTTP status when the engine answered (a
    2xx with a body that holds no engine metrics is a failure too), and what went wrong."""

    url: str | None  # None: no URL could be built (the pod has no IP yet)
    status: int | None  # None: no HTTP answer (refused, timed out)
    detail: str

    def __str__(self) -> str:
        if self.url is None:
            return self.detail
        if self.status is not None and self.status >= 400:
            return f"GET {self.url} answered HTTP {self.status}"
        return f"GET {self.url}: {self.detail}"


@dataclass(frozen=True)
class ServiceObservation:
    """What the autoscaler knows about one service at one tick (aggregated over its ready pods)."""

    service: str
    now: float  # seconds, from the injected clock
    replicas: int  # current desired replicas (spec.replicas)
    ready_replicas: int
    request_rate: float  # requests/s over the last interval
    prompt_token_rate: float  # prompt tokens/s
    generation_token_rate: float  # generated tokens/s
    queue_length: float  # waiting requests, summed over pods
    running: float  # running requests, summed over pods
    kv_cache_usage: float  # mean over pods, 0..1
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    itl_p50_s: float | None = None
    itl_p95_s: float | None = None
    stale: bool = False  # metrics missing or older than the staleness bound
    history_available: bool = True  # False when the shell could not reach the history store this tick
    engines_asked: int = 0  # engines whose metrics were asked for this tick
    scrape_failures: tuple[tuple[str, ScrapeFailure], ...] = ()  # (pod, why) of every engine that failed this tick


@dataclass(frozen=True)
class ScalingBounds:
    """The limits the user set on the LLMService."""

    min_replicas: int = 1
    max_replicas: int = 10
    scale_to_zero: bool = False
    scale_down_stabilization_s: float = 300.0
    cold_start_s: float = 180.0  # measured provisioning lead time of one replica
    decision_interval_s: float = 30.0


@dataclass(frozen=True)
class ScalingDecision:
    """How many replicas a policy wants, and why, in terms a user can read in status and Events."""

    replicas: int
    reason: str
    forecast_quantiles: dict[str, float] = field(default_factory=dict)  # e.g. {"p50": 3.1, "p90": 4.0}
    capacity_rps: float | None = None  # requests/s one replica sustains within the SLO
    risk: float | None = None  # predicted probability of missing the SLO at the chosen count
    degraded: str | None = None  # non-empty when the policy held replicas because of missing data
    degraded_reason: Reason | None = None  # why, as the AutoscalerDegraded condition's reason
    slo_attainable: bool | None = None  # False when even the best observed latency misses the SLO


class ScalingPolicy(Protocol):
    """A replica policy: fed one observation per tick, returns a decision. No I/O, no wall clock."""

    def decide(self, obs: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision: ...


History = Iterable[tuple[float, Mapping[str, float]]]
"""Stored indicator rates, oldest first: (time, {indicator: rate}) per fresh observation."""


@runtime_checkable
class StatefulPolicy(Protocol):
    """A policy whose learned state (forecaster, capacity, governor) survives a restart as JSON."""

    def to_state(self) -> dict[str, Any]: ...

    def restore(self, state: Mapping[str, Any]) -> None: ...


@runtime_checkable
class WarmablePolicy(Protocol):
    """A policy that can catch up on stored history it has not seen (after a restart, or without state)."""

    @property
    def observed_until(self) -> float | None:
        """Time of the newest observation it has learned from (None: none yet)."""
        ...

    def warm(self, history: History, bounds: ScalingBounds) -> int:
        """Learn from the points newer than `observed_until` as `decide` would; returns how many it took."""
        ...
