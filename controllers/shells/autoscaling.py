"""The autoscaler's shell: scrape a service's engines, keep history, ask its policy, write the scale subresource.

All decisions live in autoscaler/ (pure); this module only gathers the observation and applies the decision.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.engine_metrics import PodTarget, ServiceMetricsCollector
from adapters.store import HistoryStore, StoreUnavailable
from autoscaler.capacity import EngineProfile
from autoscaler.cluster import ClusterDemand, ClusterForecast
from autoscaler.forecast import EbbtideConfig, EbbtideForecaster
from autoscaler.policies import make_policy
from autoscaler.profile import engine_profile
from autoscaler.types import SLO, ScalingBounds, ScalingDecision, ScalingPolicy, ServiceObservation
from catalogue.gpus import lookup_gpu
from controllers.planners.conditions import parse_rfc3339, set_condition
from controllers.planners.llmservice import model_of
from controllers.planners.snapshot import PodView
from crds import labels as L
from crds.llmservice import LLMService
from crds.reasons import ConditionType, Reason

log = logging.getLogger("ebbtide.autoscaler")
STATE_EVERY_TICKS = 10
AUTOSCALER_CONDITIONS = frozenset({ConditionType.AUTOSCALER_DEGRADED, ConditionType.SLO_ATTAINABLE})
CLUSTER = "_cluster"  # the store's key for the whole cluster's history and forecaster (no "/": no service has it)


def slo_of(svc: LLMService) -> SLO:
    s = svc.spec.scaling.slo
    return SLO(ttft_s=s.ttft_seconds, itl_s=s.inter_token_latency_seconds, attainment=s.attainment)


def profile_of(svc: LLMService) -> EngineProfile:
    """Seed capacity from the calibrated performance model of the service's model on its GPU."""
    model = model_of(svc.spec.model)
    # The first allowed GPU product (H100 when any is allowed); the capacity learner corrects the seed online.
    names = list(svc.spec.gpu.types)
    gpu = next(g for g in (lookup_gpu(n) for n in [*names, "H100"]) if g is not None)
    return engine_profile(model, gpu, svc.spec.parallelism.tensor * svc.spec.parallelism.pipeline, slo_of(svc))


def cold_start_of(pods: list[dict[str, Any]]) -> float | None:
    """Measured provisioning lead time: mean of creation-to-Ready over the service's ready pods."""
    samples = []
    for p in pods:
        created = parse_rfc3339(p["metadata"].get("creationTimestamp"))
        ready = next(
            (
                parse_rfc3339(c.get("lastTransitionTime"))
                for c in (p.get("status") or {}).get("conditions", [])
                if c.get("type") == ConditionType.READY and c.get("status") == "True"
            ),
            None,
        )
        if created is not None and ready is not None and ready >= created:
            samples.append(ready - created)
    return sum(samples) / len(samples) if samples else None


@dataclass
class ServiceScaler:
    """A service's policy instance and what the shell remembers between ticks."""

    policy_name: str
    policy: ScalingPolicy
    knobs: dict[str, float] = field(default_factory=dict)
    ticks: int = 0
    cold_start_s: float | None = None
    restored: bool = False


@dataclass
class Autoscaler:
    """One per operator process; `tick` runs once per decision interval per service."""

    collector: ServiceMetricsCollector
    store: HistoryStore
    interval_s: float = 15.0
    default_cold_start_s: float = 180.0
    forecast_error_window: int = 200  # realised forecast errors kept per horizon: how long a burst is remembered
    scalers: dict[str, ServiceScaler] = field(default_factory=dict)
    last_observation: dict[str, ServiceObservation] = field(default_factory=dict)
    cluster: ClusterDemand = field(init=False)
    _cluster_restored: bool = field(default=False, init=False)
    _cluster_feeds: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.cluster = ClusterDemand(self.interval_s, forecaster=self._forecaster())

    def _forecaster(self) -> EbbtideForecaster:
        window = self.forecast_error_window
        return EbbtideForecaster(EbbtideConfig(error_window=window, min_errors=min(30, window)))

    def scaler_for(self, key: str, svc: LLMService) -> ServiceScaler:
        name = svc.spec.scaling.policy
        knobs = policy_knobs(svc)
        current = self.scalers.get(key)
        if current is not None and current.policy_name == name and current.knobs == knobs:
            return current
        profile = profile_of(svc)
        kwargs: dict[str, Any] = {"profile": profile, **knobs} if name in ("forecast", "reactive") else {}
        if name == "forecast":
            kwargs["forecaster"] = self._forecaster()
        policy = make_policy(name, **kwargs)
        restored = False
        if current is not None and current.policy_name == name:
            # A retuned knob must not cost the service its learned history: carry the state across.
            to_state, restore = getattr(current.policy, "to_state", None), getattr(policy, "restore", None)
            if to_state is not None and restore is not None:
                restore(to_state())
            restored = current.restored
        cold_start = current.cold_start_s if current is not None else None
        self.scalers[key] = ServiceScaler(name, policy, knobs, restored=restored, cold_start_s=cold_start)
        return self.scalers[key]

    async def observe(
        self, key: str, svc: LLMService, pods: list[PodView], now: float
    ) -> tuple[ServiceObservation, bool]:
        """The service's observation this tick, and whether its history could be stored."""
        targets = [
            PodTarget(p.name, p.ip, svc.spec.engine.port, p.annotations.get(L.ENGINE_URL))
            for p in pods
            if p.ready and not p.deleting and p.draining_since is None and p.labels.get(L.ROLE) != "worker"
        ]
        obs = await self.collector.observe(
            key, targets, replicas=svc.spec.replicas, ready_replicas=svc.status.ready_replicas
        )
        stored = True
        try:
            await self.store.append(
                key,
                now,
                {
                    "request_rate": obs.request_rate,
                    "prompt_token_rate": obs.prompt_token_rate,
                    "generation_token_rate": obs.generation_token_rate,
                },
            )
        except StoreUnavailable as e:
            log.warning("history store unavailable for %s: %s", key, e)
            stored = False
        return replace(obs, history_available=stored), stored

    async def decide(
        self, key: str, svc: LLMService, raw_pods: list[dict[str, Any]], pods: list[PodView], now: float
    ) -> ScalingDecision:
        """Observe and decide for one service (the policy itself is pure)."""
        scaler = self.scaler_for(key, svc)
        if not scaler.restored:
            scaler.restored = True
            await self._restore(key, "policy", scaler.policy)
        measured = cold_start_of([p for p in raw_pods if not p["metadata"].get("deletionTimestamp")])
        if measured is not None:
            scaler.cold_start_s = measured
        obs, _ = await self.observe(key, svc, pods, now)
        self.last_observation[key] = obs
        sc = svc.spec.scaling
        bounds = ScalingBounds(
            min_replicas=sc.min_replicas,
            max_replicas=sc.max_replicas,
            scale_to_zero=sc.scale_to_zero,
            scale_down_stabilization_s=float(sc.scale_down_stabilization_seconds),
            cold_start_s=scaler.cold_start_s or self.default_cold_start_s,
            decision_interval_s=self.interval_s,
        )
        decision = scaler.policy.decide(obs, bounds, slo_of(svc))
        scaler.ticks += 1
        if scaler.ticks % STATE_EVERY_TICKS == 0:
            await self._save(key, "policy", scaler.policy)
        self.cluster.observe(key, obs, bounds.cold_start_s + bounds.decision_interval_s)
        await self.tick_cluster(now)
        return decision

    async def tick_cluster(self, now: float) -> ClusterForecast | None:
        """Feed the whole cluster's totals (once per interval) and keep its forecaster's state in the store."""
        if not self._cluster_restored:
            self._cluster_restored = True
            await self._restore(CLUSTER, "forecaster", self.cluster)
        fed_before = self.cluster.last
        try:
            forecast = self.cluster.tick(now)
        except Exception as e:  # a plug-in forecaster's failure must not cost the service its decision
            log.warning("cluster forecast failed: %s: %s", type(e).__name__, e)
            return self.cluster.last
        if forecast is None or forecast is fed_before:
            return forecast
        self._cluster_feeds += 1
        try:
            await self.store.append(CLUSTER, now, forecast.observed)
        except StoreUnavailable as e:
            log.warning("history store unavailable for the cluster forecast: %s", e)
        if self._cluster_feeds % STATE_EVERY_TICKS == 0:
            await self._save(CLUSTER, "forecaster", self.cluster)
        return forecast

    async def _restore(self, key: str, name: str, target: object) -> None:
        """Load `target`'s saved state (a policy, or the cluster forecast), if it keeps any and there is one."""
        restore = getattr(target, "restore", None)
        if restore is None:
            return
        try:
            blob = await self.store.load_state(key, name)
        except StoreUnavailable:
            return
        if blob:
            try:
                restore(json.loads(blob))
                log.info("restored %s state of %s", name, key)
            except (KeyError, ValueError, TypeError) as e:
                log.warning("discarding unreadable %s state of %s: %s", name, key, e)

    async def _save(self, key: str, name: str, target: object) -> None:
        to_state = getattr(target, "to_state", None)
        if to_state is None:
            return
        try:
            await self.store.save_state(key, name, json.dumps(to_state()).encode())
        except StoreUnavailable as e:
            log.warning("could not save %s state of %s: %s", name, key, e)

    def forget(self, key: str) -> None:
        self.scalers.pop(key, None)
        self.cluster.forget(key)
        self.last_observation.pop(key, None)
        self.collector.forget(key)


def policy_knobs(svc: LLMService) -> dict[str, float]:
    """The policy's tuning set in spec.scaling, as constructor arguments (empty: the policy's defaults)."""
    sc = svc.spec.scaling
    if sc.policy == "forecast" and sc.forecast_coverage is not None:
        return {"risk": round(1.0 - sc.forecast_coverage, 6)}
    if sc.policy == "reactive" and sc.target_utilization is not None:
        return {"target_utilization": sc.target_utilization}
    return {}


def decision_status(
    status: dict[str, Any], decision: ScalingDecision, now: float, generation: int | None
) -> dict[str, Any]:
    """The status fields and conditions the autoscaler owns, and only those: it applies them as its own field
    manager, so the reconciler's fields and conditions are never in what it sends."""
    q = decision.forecast_quantiles
    forecast = {
        "horizonSeconds": q.get("horizon_s"),
        "p50": q.get("p50"),
        "p90": q.get("p90"),
        "p99": q.get("p99"),
        "capacityRps": decision.capacity_rps,
        "risk": decision.risk,
        "reason": decision.reason[:500],
    }
    forecast = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in forecast.items() if _finite(v)}
    conditions = [c for c in status.get("conditions", []) if c.get("type") in AUTOSCALER_CONDITIONS]
    if decision.degraded:
        conditions = set_condition(
            conditions,
            ConditionType.AUTOSCALER_DEGRADED,
            True,
            decision.degraded_reason or Reason.DEGRADED,
            decision.degraded,
            now,
            generation,
        )
    else:
        conditions = set_condition(
            conditions, ConditionType.AUTOSCALER_DEGRADED, False, Reason.METRICS_FRESH, "", now, generation
        )
    if decision.slo_attainable is False:
        conditions = set_condition(
            conditions,
            ConditionType.SLO_ATTAINABLE,
            False,
            Reason.SLO_UNATTAINABLE,
            decision.reason[:500],
            now,
            generation,
        )
    elif decision.slo_attainable is True:
        conditions = set_condition(
            conditions, ConditionType.SLO_ATTAINABLE, True, Reason.ATTAINABLE, "", now, generation
        )
    return {"desiredReplicas": decision.replicas, "forecast": forecast, "conditions": conditions}


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and not math.isfinite(v))
