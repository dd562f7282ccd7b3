"""Builders for autoscaler test cases: observations with sensible defaults, overridden per test."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from autoscaler.capacity import EngineProfile
from autoscaler.types import SLO, ScalingBounds, ScalingDecision, ScalingPolicy, ServiceObservation

PROFILE = EngineProfile(request_rate=2.0, prompt_token_rate=2000.0, generation_token_rate=600.0)
BOUNDS = ScalingBounds(min_replicas=1, max_replicas=20, cold_start_s=180.0, decision_interval_s=30.0)
SLO_DEFAULT = SLO(ttft_s=2.0, itl_s=0.1, attainment=0.99)
TICK = 30.0


def obs(now: float = 0.0, rate: float = 4.0, replicas: int = 2, **overrides: Any) -> ServiceObservation:
    """A fresh observation at `now` serving `rate` req/s (500 prompt, 150 generated tokens each)."""
    base = ServiceObservation(
        service="default/llm",
        now=now,
        replicas=replicas,
        ready_replicas=replicas,
        request_rate=rate,
        prompt_token_rate=rate * 500.0,
        generation_token_rate=rate * 150.0,
        queue_length=0.0,
        running=rate * 2.0,
        kv_cache_usage=0.4,
        ttft_p50_s=0.3,
        ttft_p95_s=0.8,
        itl_p50_s=0.03,
        itl_p95_s=0.05,
    )
    return replace(base, **overrides)


def bounds(**overrides: Any) -> ScalingBounds:
    """The default bounds with overrides."""
    return replace(BOUNDS, **overrides)


def drive(
    policy: ScalingPolicy,
    rates: Iterable[float],
    b: ScalingBounds | None = None,
    *,
    start: float = 0.0,
    replicas: int = 2,
    **fields: object,
) -> list[ScalingDecision]:
    """Feed one observation per tick, applying each decision at once (replicas ready immediately)."""
    b = b or bounds()
    out: list[ScalingDecision] = []
    for i, r in enumerate(rates):
        o = obs(now=start + i * TICK, rate=r, replicas=replicas)
        if fields:
            o = replace(o, **fields)  # type: ignore[arg-type]
        d = policy.decide(o, b, SLO_DEFAULT)
        out.append(d)
        replicas = d.replicas
    return out
