"""What one replica sustains within the SLO, seeded from an engine profile and learned online.

Pure: fed ServiceObservations (time inside them), no I/O. The learner keeps one number, the share of the
profiled capacity a replica really sustains (`scale`), so a shift in the request mix (longer prompts, longer
answers) is handled by the profile's per-dimension capacities while drift (slower GPUs, a new engine
version) moves `scale`. It also keeps the best recent latency, to say when the SLO is out of reach.

The profile is trusted until the evidence against it is sustained. A tick's tail latency is noisy next to
an attainment target over many requests (at the profiled capacity a 30 s window's p95 often crosses the
SLO while 99% of requests still meet it), so single misses teach nothing: a one-sided CUSUM counts misses
well below the estimate (or comfortable ticks well above it), and only once it confirms does the estimate
move, toward the load that missed (or held). Ticks while a queue drains are skipped, since their latency
is the backlog's, not the current load's (a queue that grows below the estimate is evidence, though).
The latency compared is p95, or p50 when the attainment target is 50% or lower.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from autoscaler.types import SLO, ServiceObservation


@dataclass(frozen=True)
class EngineProfile:
    """What one replica of this model and engine sustains at the SLO, from an offline benchmark."""

    request_rate: float  # requests/s at which latency still meets the SLO
    prompt_token_rate: float | None = None  # prompt tokens/s at the SLO; None if it never binds
    generation_token_rate: float | None = None  # generated tokens/s at the SLO; None if it never binds
    ttft_s: float | None = None  # unloaded time to first token, if measured
    itl_s: float | None = None  # unloaded inter-token latency, if measured

    def __post_init__(self) -> None:
        for name in ("request_rate", "prompt_token_rate", "generation_token_rate"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"EngineProfile.{name} must be a positive number, got {v}")


@dataclass(frozen=True)
class CapacityEstimate:
    """Per-replica capacity within the SLO, and what the learner knows about attainability."""

    request_rate: float
    prompt_token_rate: float | None
    generation_token_rate: float | None
    scale: float  # learned share of the profiled capacity (1.0 = as profiled)
    best_ttft_s: float | None  # best recent tail latency (see CapacityLearner)
    best_itl_s: float | None
    slo_attainable: bool | None  # None until there is evidence either way
    learned_from: int  # observations that moved or confirmed the estimate
    drift: bool  # a change in capacity was detected recently

    def replicas_for(self, request_rate: float, prompt_rate: float = 0.0, generation_rate: float = 0.0) -> float:
        """Replicas (fractional) needed to serve these rates within the SLO: the binding dimension decides."""
        need = request_rate / self.request_rate
        if self.prompt_token_rate:
            need = max(need, prompt_rate / self.prompt_token_rate)
        if self.generation_token_rate:
            need = max(need, generation_rate / self.generation_token_rate)
        return need

    def effective_request_rate(self, prompt_per_request: float, generation_per_request: float) -> float:
        """Requests/s one replica sustains for a given mix of tokens per request."""
        return 1.0 / max(self.replicas_for(1.0, prompt_per_request, generation_per_request), 1e-12)


@dataclass(frozen=True)
class CapacityConfig:
    """How the capacity learner weighs evidence."""

    up_rate: float = 0.1  # step toward a higher load that met the SLO
    down_rate: float = 0.3  # step toward a lower load that missed it (missing costs more than idling)
    min_evidence_util: float = 0.3  # misses below this share of capacity are not about load
    near_slo: float = 0.9  # latency under this share of the SLO is comfortable
    below_band: float = 0.8  # misses under this share of the estimate are surprising ...
    above_band: float = 1.2  # ... and so is comfortable latency over this share
    min_scale: float = 0.25  # a profile off by more than 4x means something else is wrong: say so, don't chase it
    max_scale: float = 4.0
    light_util: float = 0.5  # latency at or below this share of capacity is the engine's best, not queueing
    drift_slack: float = 0.3  # CUSUM slack per observation: occasional surprises are noise
    confirm: float = 1.5  # CUSUM level from which surprises move the estimate
    drift_threshold: float = 3.0  # CUSUM alarm level
    drift_boost: float = 3.0  # learning rates multiply by this for a while after an alarm
    drift_hold: int = 20  # observations the boost lasts
    best_window: int = 240  # observations over which the best latency is remembered
    min_latency_samples: int = 5  # light-load latencies needed before they outweigh the profile


class _WindowMin:
    """Minimum over the last `size` values, O(1) amortised (monotone deque)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.i = 0
        self.q: deque[tuple[int, float]] = deque()

    def push(self, v: float) -> None:
        while self.q and self.q[-1][1] >= v:
            self.q.pop()
        self.q.append((self.i, v))
        self.i += 1
        while self.q[0][0] <= self.i - 1 - self.size:
            self.q.popleft()

    @property
    def value(self) -> float | None:
        return self.q[0][1] if self.q else None


class CapacityLearner:
    """Learns per-replica capacity from (load per ready replica, p95 latency) pairs against the SLO, and
    whether the SLO is attainable at all (latency at light load, or misses at the capacity floor)."""

    def __init__(self, profile: EngineProfile, config: CapacityConfig | None = None) -> None:
        self.profile = profile
        self.config = config or CapacityConfig()
        self._scale = 1.0
        self._cusum_low = 0.0  # evidence that capacity is lower than believed
        self._cusum_high = 0.0  # evidence that it is higher
        self._boost_left = 0
        self._last_queue = 0.0
        self._drift = False
        self._learned = 0
        self._light_samples = 0
        self._missed_at_floor = False
        self._best_ttft = _WindowMin(self.config.best_window)
        self._best_itl = _WindowMin(self.config.best_window)

    def utilization(self, obs: ServiceObservation) -> float | None:
        """Load per ready replica as a share of the profiled capacity, or None without ready replicas."""
        if obs.ready_replicas <= 0:
            return None
        n = obs.ready_replicas
        p = self.profile
        u = obs.request_rate / n / p.request_rate
        if p.prompt_token_rate:
            u = max(u, obs.prompt_token_rate / n / p.prompt_token_rate)
        if p.generation_token_rate:
            u = max(u, obs.generation_token_rate / n / p.generation_token_rate)
        return u

    def observe(self, obs: ServiceObservation, slo: SLO) -> None:
        """Learn from one tick; stale ticks and ticks without latency or ready replicas are ignored."""
        if obs.stale:
            return
        tail = slo.attainment > 0.5
        ttft = obs.ttft_p95_s if tail else obs.ttft_p50_s
        itl = obs.itl_p95_s if tail else obs.itl_p50_s
        ttft = ttft if ttft is not None and math.isfinite(ttft) else None
        itl = itl if itl is not None and math.isfinite(itl) else None
        u = self.utilization(obs)
        if (ttft is None and itl is None) or u is None or not math.isfinite(u):
            return
        c = self.config
        draining = self._last_queue > 0 and obs.queue_length <= self._last_queue
        self._last_queue = obs.queue_length
        if u <= c.light_util * self._scale and not draining:
            # Light load: this latency is what the engine does at best, so it decides attainability.
            self._light_samples += 1
            if ttft is not None:
                self._best_ttft.push(ttft)
            if itl is not None:
                self._best_itl.push(itl)
        if u <= 0:
            return
        ratios = [x / limit for x, limit in ((ttft, slo.ttft_s), (itl, slo.itl_s)) if x is not None]
        pressure = max(ratios)  # share of the latency budget used by the tighter of the two
        s = self._scale
        self._missed_at_floor = pressure > 1.0 and s <= c.min_scale
        boosted = self._boost_left > 0
        boost = c.drift_boost if boosted else 1.0
        self._boost_left = max(self._boost_left - 1, 0)
        missed = pressure > 1.0 and c.min_evidence_util * s <= u < s and not draining
        comfortable = pressure < c.near_slo and u > s
        # Far from the estimate a miss (or comfort) is a surprise; near it, only once a change is under way.
        surprise_low = 1.0 if missed and (u < c.below_band * s or self._cusum_low >= c.confirm) else 0.0
        surprise_high = 1.0 if comfortable and (u > c.above_band * s or self._cusum_high >= c.confirm) else 0.0
        # One-sided CUSUMs over surprises: the estimate moves only on a sustained change, not the odd slow tick.
        self._cusum_low = max(0.0, self._cusum_low + surprise_low - c.drift_slack)
        self._cusum_high = max(0.0, self._cusum_high + surprise_high - c.drift_slack)
        if missed and (boosted or self._cusum_low >= c.confirm):
            self._scale += min(c.down_rate * boost, 1.0) * (0.95 * u - s)
            self._learned += 1
        elif comfortable and (boosted or self._cusum_high >= c.confirm):
            self._scale += min(c.up_rate * boost, 1.0) * (u - s)
            self._learned += 1
        self._scale = min(max(self._scale, c.min_scale), c.max_scale)
        self._drift = False
        if max(self._cusum_low, self._cusum_high) >= c.drift_threshold:
            self._drift = True
            self._boost_left = c.drift_hold
            self._cusum_low = self._cusum_high = 0.0

    def estimate(self, slo: SLO) -> CapacityEstimate:
        """The current per-replica capacity and attainability against this SLO."""
        p = self.profile
        s = self._scale
        best_ttft = self._best_ttft.value
        best_itl = self._best_itl.value
        if self._light_samples < self.config.min_latency_samples:
            # Until enough light-load latency has been seen, the profile's unloaded latency is the evidence.
            best_ttft = best_ttft if best_ttft is not None and p.ttft_s is None else p.ttft_s
            best_itl = best_itl if best_itl is not None and p.itl_s is None else p.itl_s
            known = p.ttft_s is not None or p.itl_s is not None
        else:
            known = True
        attainable: bool | None = None
        if known:
            attainable = not (
                (best_ttft is not None and best_ttft > slo.ttft_s) or (best_itl is not None and best_itl > slo.itl_s)
            )
        if self._missed_at_floor:
            attainable = False  # missing the SLO at a quarter of the profiled load is not a capacity problem
        return CapacityEstimate(
            request_rate=p.request_rate * s,
            prompt_token_rate=p.prompt_token_rate * s if p.prompt_token_rate else None,
            generation_token_rate=p.generation_token_rate * s if p.generation_token_rate else None,
            scale=s,
            best_ttft_s=best_ttft,
            best_itl_s=best_itl,
            slo_attainable=attainable,
            learned_from=self._learned,
            drift=self._drift or self._boost_left > 0,
        )

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot (the latency windows keep only their current minimum)."""
        return {
            "profile": asdict(self.profile),
            "config": asdict(self.config),
            "scale": self._scale,
            "cusum": [self._cusum_low, self._cusum_high],
            "boost_left": self._boost_left,
            "last_queue": self._last_queue,
            "learned": self._learned,
            "light_samples": self._light_samples,
            "missed_at_floor": self._missed_at_floor,
            "best": [self._best_ttft.value, self._best_itl.value],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CapacityLearner:
        """Rebuild from `to_state`."""
        learner = cls(EngineProfile(**state["profile"]), CapacityConfig(**state["config"]))
        learner._scale = float(state["scale"])
        learner._cusum_low, learner._cusum_high = (float(x) for x in state["cusum"])
        learner._boost_left = int(state["boost_left"])
        learner._last_queue = float(state.get("last_queue", 0.0))
        learner._learned = int(state["learned"])
        learner._light_samples = int(state["light_samples"])
        learner._missed_at_floor = bool(state["missed_at_floor"])
        best_ttft, best_itl = state["best"]
        if best_ttft is not None:
            learner._best_ttft.push(float(best_ttft))
        if best_itl is not None:
            learner._best_itl.push(float(best_itl))
        return learner
