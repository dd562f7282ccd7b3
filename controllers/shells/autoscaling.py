"""The autoscaler's shell: observe a service's engines, keep history and state, tick its scaling loop.

All decisions live in autoscaler/ (pure; the loop around a policy is `autoscaler.loop.ScalingLoop`, the same the
simulator drives); this module gathers the observation through the metrics-source port, reads the cold start
from the pods, keeps history and state in the store (read back after a restart) and returns the decision, which
`handlers.autoscale` writes to the scale subresource.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from adapters.engine_metrics import PodTarget
from adapters.store import HistoryStore, StoreUnavailable
from autoscaler.capacity import EngineProfile
from autoscaler.cluster import ClusterDemand, ClusterForecast
from autoscaler.forecast import INDICATORS, EbbtideConfig, EbbtideForecaster
from autoscaler.loop import STATE_EVERY_TICKS, PolicyFactory, ScalingKnobs, ScalingLoop, crd_policies
from autoscaler.policies import lead_time, observed_rates
from autoscaler.profile import engine_profile
from autoscaler.types import SLO, History, ScalingBounds, ScalingDecision, ScrapeFailure, ServiceObservation
from catalogue.gpus import GPUProfile, lookup_gpu
from catalogue.models import Architecture, resolve_model
from controllers.planners.conditions import get_condition, parse_rfc3339, set_condition
from controllers.planners.engines import elastic_max
from controllers.planners.growth import GrowthChoice, Narrowing, choose_growth, choose_narrowing
from controllers.planners.llmservice import model_of
from controllers.planners.rescale import gpus_per_rank
from controllers.planners.snapshot import PodView
from crds import labels as L
from crds.llmservice import LLMService
from crds.reasons import ConditionType, EventType, Reason

log = logging.getLogger("ebbtide.autoscaler")
AUTOSCALER_CONDITIONS = frozenset(
    {ConditionType.AUTOSCALER_DEGRADED, ConditionType.SLO_ATTAINABLE, ConditionType.POWER_LIMITED}
)
WARM_WINDOW_S = 6 * 3600.0  # history read back for a service with no saved state (the forecaster's warm-up)
CLUSTER = "_cluster"  # the store's key for the whole cluster's history and forecaster (no "/": no service has it)


def slo_of(svc: LLMService) -> SLO:
    s = svc.spec.scaling.slo
    return SLO(ttft_s=s.ttft_seconds, itl_s=s.inter_token_latency_seconds, attainment=s.attainment)


def profile_of(svc: LLMService) -> EngineProfile:
    """Seed capacity from the calibrated performance model of the service's model on its GPU."""
    m = svc.spec.model
    return _profile(
        m.name,
        m.parameters_b,
        m.architecture,
        m.experts or 0,
        m.active_parameters_b,
        m.experts_per_token or 2,
        tuple(svc.spec.gpu.types),
        svc.spec.parallelism.tensor * svc.spec.parallelism.pipeline,
        slo_of(svc),
    )


@functools.lru_cache(maxsize=256)
def _profile(
    name: str,
    parameters_b: float,
    architecture: Architecture,
    experts: int,
    active_parameters_b: float | None,
    experts_per_token: int,
    gpu_types: tuple[str, ...],
    gpus: int,
    slo: SLO,
) -> EngineProfile:
    # Memoised: the knobs are read every tick, and the performance model's batch search takes milliseconds.
    # The same model validation checks the fit of (catalogue.models.resolve_model).
    model = resolve_model(
        name, parameters_b, architecture, experts, active_parameters_b, experts_per_token=experts_per_token
    )
    # The first allowed GPU product (H100 when any is allowed); the capacity learner corrects the seed online.
    gpu = next(g for g in (lookup_gpu(n) for n in [*gpu_types, "H100"]) if g is not None)
    return engine_profile(model, gpu, gpus, slo)


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


class MetricsSource(Protocol):
    """The metrics-source port: a service's observation from its engines (pod scrapes or a Prometheus query)."""

    async def observe(
        self, service: str, targets: Sequence[PodTarget], *, replicas: int, ready_replicas: int
    ) -> ServiceObservation:
        """The `namespace/name` service's observation now; stale when too few engines answered."""
        ...

    def forget(self, service: str) -> None:
        """Drop what is kept for a deleted service."""
        ...


@dataclass
class Autoscaler:
    """One per operator process; `decide` runs once per decision interval per service. Each service's
    `ScalingLoop` (autoscaler/loop.py) makes the decision; this shell feeds it and keeps its state."""

    metrics: MetricsSource
    store: HistoryStore
    interval_s: float = 15.0
    default_cold_start_s: float = 180.0
    forecast_error_window: int = 200  # realised forecast errors kept per horizon: how long a burst is remembered
    loops: dict[str, ScalingLoop] = field(default_factory=dict)
    last_observation: dict[str, ServiceObservation] = field(default_factory=dict)
    cluster: ClusterDemand = field(init=False)
    _factory: PolicyFactory = field(init=False)
    _restored: set[str] = field(default_factory=set, init=False)
    _cluster_restored: bool = field(default=False, init=False)
    _cluster_feeds: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        window = self.forecast_error_window
        self._factory = crd_policies(forecast_error_window=window)
        forecaster = EbbtideForecaster(EbbtideConfig(error_window=window, min_errors=min(30, window)))
        self.cluster = ClusterDemand(self.interval_s, forecaster=forecaster)

    def knobs(self, svc: LLMService) -> ScalingKnobs:
        """The loop's knobs from the service's spec and the operator's interval and assumed cold start."""
        return knobs_of(svc, interval_s=self.interval_s, default_cold_start_s=self.default_cold_start_s)

    def loop_for(self, key: str, knobs: ScalingKnobs) -> ScalingLoop:
        """The service's loop, configured for its current knobs (a retuned knob keeps the learned state)."""
        loop = self.loops.get(key)
        if loop is None:
            loop = self.loops[key] = ScalingLoop(self._factory)
        loop.configure(knobs)
        return loop

    async def observe(self, key: str, svc: LLMService, pods: list[PodView], now: float) -> ServiceObservation:
        """The service's observation this tick; a fresh one is appended to the history store."""
        targets = [
            PodTarget(p.name, p.ip, svc.spec.engine.port, p.annotations.get(L.ENGINE_URL))
            for p in pods
            if p.ready and not p.deleting and p.draining_since is None and p.labels.get(L.ROLE) != "worker"
        ]
        obs = await self.metrics.observe(
            key, targets, replicas=svc.spec.replicas, ready_replicas=svc.status.ready_replicas
        )
        if obs.stale:
            return obs  # only what a policy learns from is history worth reading back
        try:
            await self.store.append(key, now, observed_rates(obs))
        except StoreUnavailable as e:
            log.warning("history store unavailable for %s: %s", key, e)
            return replace(obs, history_available=False)
        return obs

    async def decide(
        self, key: str, svc: LLMService, raw_pods: list[dict[str, Any]], pods: list[PodView], now: float
    ) -> ScalingDecision:
        """Observe and decide for one service (the loop itself is pure)."""
        knobs = self.knobs(svc)
        loop = self.loop_for(key, knobs)
        if key not in self._restored:
            self._restored.add(key)
            await self._restore(key, "policy", loop)
            if loop.learns_from_history:
                await self._warm(key, now, lambda history: loop.warm(history, knobs), loop.observed_until)
        obs = await self.observe(key, svc, pods, now)
        measured = cold_start_of([p for p in raw_pods if not p["metadata"].get("deletionTimestamp")])
        step = loop.tick(now, knobs, obs, measured)
        self.last_observation[key] = step.observation
        if step.save_state:
            await self._save(key, "policy", loop)
        self.cluster.observe(key, step.observation, lead_time(step.bounds))
        await self.tick_cluster(now)
        return step.decision

    async def tick_cluster(self, now: float) -> ClusterForecast | None:
        """Feed the whole cluster's totals (once per interval) and keep its forecaster's state in the store."""
        if not self._cluster_restored:
            self._cluster_restored = True
            await self._restore(CLUSTER, "forecaster", self.cluster)
            await self._warm(CLUSTER, now, self.cluster.warm, self.cluster.observed_until)
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

    async def _restore(self, key: str, name: str, target: ScalingLoop | ClusterDemand) -> None:
        """Load `target`'s saved state (a service's policy, or the cluster forecast), if there is one."""
        try:
            blob = await self.store.load_state(key, name)
        except StoreUnavailable:
            return
        if blob:
            try:
                if target.restore(json.loads(blob)) is not False:
                    log.info("restored %s state of %s", name, key)
            except (KeyError, ValueError, TypeError) as e:
                log.warning("discarding unreadable %s state of %s: %s", name, key, e)

    async def _warm(self, key: str, now: float, warm: Callable[[History], int], since: float | None) -> None:
        """Read back the stored history the restored state has not seen (all of the last WARM_WINDOW_S when
        there was no state) and let the forecaster learn from it, off the event loop."""
        start = since if since is not None else now - WARM_WINDOW_S
        try:
            history = await self._history(key, start, now)
        except StoreUnavailable as e:
            log.warning("could not read back the history of %s: %s", key, e)
            return
        if history:
            taken = await asyncio.to_thread(warm, history)
            log.info("read back %d of %d stored observations of %s", taken, len(history), key)

    async def _history(self, key: str, start: float, end: float) -> list[tuple[float, dict[str, float]]]:
        """The stored indicator series of `key` in [start, end], joined by time, oldest first."""
        points: dict[float, dict[str, float]] = {}
        for indicator in INDICATORS:
            for t, v in await self.store.range(key, indicator, start, end):
                points.setdefault(t, {})[indicator] = v
        return sorted(points.items())

    async def _save(self, key: str, name: str, target: ScalingLoop | ClusterDemand) -> None:
        state = target.to_state()
        if state is None:
            return
        try:
            await self.store.save_state(key, name, json.dumps(state).encode())
        except StoreUnavailable as e:
            log.warning("could not save %s state of %s: %s", name, key, e)

    def forget(self, key: str) -> None:
        """A deleted service, or one no longer autoscaled: drop its loop, observation and cluster share."""
        self.loops.pop(key, None)
        self._restored.discard(key)
        self.cluster.forget(key)
        self.last_observation.pop(key, None)
        self.metrics.forget(key)


def knobs_of(svc: LLMService, *, interval_s: float, default_cold_start_s: float) -> ScalingKnobs:
    """A service's scaling knobs: spec.scaling's policy, tuning, bounds and SLO, and its engine profile."""
    sc = svc.spec.scaling
    bounds = ScalingBounds(
        min_replicas=sc.min_replicas,
        max_replicas=sc.max_replicas,
        scale_to_zero=sc.scale_to_zero,
        scale_down_stabilization_s=float(sc.scale_down_stabilization_seconds),
        cold_start_s=default_cold_start_s,
        decision_interval_s=interval_s,
    )
    return ScalingKnobs(sc.policy, policy_knobs(svc), bounds, slo_of(svc), profile_of(svc))


def policy_knobs(svc: LLMService) -> dict[str, float]:
    """The policy's tuning set in spec.scaling, as constructor arguments (empty: the policy's defaults)."""
    sc = svc.spec.scaling
    if sc.policy == "forecast" and sc.forecast_coverage is not None:
        return {"risk": round(1.0 - sc.forecast_coverage, 6)}
    if sc.policy == "reactive" and sc.target_utilization is not None:
        return {"target_utilization": sc.target_utilization}
    return {}


def decision_status(
    status: dict[str, Any],
    decision: ScalingDecision,
    now: float,
    generation: int | None,
    power_limited: str | None = None,
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
    if power_limited is not None:
        conditions = set_condition(
            conditions, ConditionType.POWER_LIMITED, True, Reason.POWER_LIMITED, power_limited[:500], now, generation
        )
    elif any(c.get("type") == ConditionType.POWER_LIMITED for c in conditions):
        conditions = set_condition(
            conditions, ConditionType.POWER_LIMITED, False, Reason.POWER_AVAILABLE, "", now, generation
        )
    return {"desiredReplicas": decision.replicas, "forecast": forecast, "conditions": conditions}


def scrape_failure_events(before: ServiceObservation | None, now: ServiceObservation) -> list[tuple[str, str, str]]:
    """A Warning Event for every engine whose metrics call newly failed, or fails differently than last tick
    (another status or URL), naming the pod, the URL and the status; one that keeps failing the same way is
    not repeated every tick."""
    previous: dict[str, ScrapeFailure] = dict(before.scrape_failures) if before is not None else {}
    return [
        (EventType.WARNING, Reason.METRICS_UNAVAILABLE, f"engine pod {pod}: {failure}")
        for pod, failure in now.scrape_failures
        if (p := previous.get(pod)) is None or (p.url, p.status) != (failure.url, failure.status)
    ]


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and not math.isfinite(v))


ENTRY_ROLES = ("server", "leader")


@dataclass(frozen=True)
class ElasticWidths:
    """What the entry pods of an elastic MoE service say: the narrowest width a replica runs at, that replica's
    GPUs per rank, and whether every replica runs at the width the spec asks for."""

    width: int
    rank_gpus: int
    settled: bool


def elastic_widths(svc: LLMService, pods: list[PodView]) -> ElasticWidths:
    """The running widths of an elastic MoE service's replicas (controllers/shells/rescaling.py writes them)."""
    spec = svc.spec
    asked = spec.parallelism.expert
    entries = [p for p in pods if p.labels.get(L.ROLE) in ENTRY_ROLES and not p.deleting and p.draining_since is None]
    widths: dict[int, int] = {}
    for p in entries:
        try:
            widths[p.replica] = int(p.annotations.get(L.EXPERT_WIDTH, asked))
        except ValueError:
            widths[p.replica] = asked
    if not widths:
        return ElasticWidths(asked, gpus_per_rank(spec.gpu.count, asked), True)
    narrowest = min(widths, key=lambda r: widths[r])
    joined = sum(
        1 for p in pods if p.replica == narrowest and p.labels.get(L.ROLE) == L.EP_RANK_ROLE and not p.deleting
    )
    width = widths[narrowest]
    # The entry pod holds the GPUs of the width its engine started with; rank pods that joined hold the rest.
    return ElasticWidths(width, gpus_per_rank(spec.gpu.count, width - joined), set(widths.values()) == {asked})


def _true(conditions: list[dict[str, Any]], type_: ConditionType) -> dict[str, Any] | None:
    found = get_condition(conditions, type_)
    return found if found is not None and found.get("status") == "True" else None


def first_gpu(svc: LLMService) -> GPUProfile:
    """The profile of the service's first GPU type the catalogue knows (an H100's when none is)."""
    return next(g for g in (lookup_gpu(n) for n in [*svc.spec.gpu.types, "H100"]) if g is not None)


def moe_growth(
    svc: LLMService,
    conditions: list[dict[str, Any]],
    pods: list[PodView],
    raw_pods: list[dict[str, Any]],
    wanted: int,
) -> GrowthChoice | None:
    """For an elastic MoE service the autoscaler wants to grow: widen EP in place or add whole replicas
    (controllers/planners/growth.py); None for any other service or when it does not grow."""
    spec = svc.spec
    if spec.model.architecture != "moe" or not spec.parallelism.elastic_expert or wanted <= spec.replicas:
        return None
    running = elastic_widths(svc, pods)
    failed = _true(conditions, ConditionType.RESCALE_FAILED)
    unavailable = None
    if failed is not None:
        unavailable = f"the last width change failed ({failed.get('reason')}): {failed.get('message', '')}"
    in_progress = _true(conditions, ConditionType.RESCALING) is not None or (failed is None and not running.settled)
    model = model_of(spec.model)
    gpu = first_gpu(svc)
    # Pod starts as measured on this service: whole replicas' entry pods, and rank pods that joined (which only
    # start an engine core; their weights come from the serving ranks, in the modelled resize).
    alive = [p for p in raw_pods if not p["metadata"].get("deletionTimestamp")]
    joined = [p for p in alive if (p["metadata"].get("labels") or {}).get(L.ROLE) == L.EP_RANK_ROLE]
    measured = cold_start_of([p for p in alive if p not in joined])
    return choose_growth(
        model,
        gpu,
        slo_of(svc),
        replicas=spec.replicas,
        wanted=wanted,
        width=running.width,
        max_width=elastic_max(spec),
        rank_gpus=running.rank_gpus,
        unavailable=unavailable,
        in_progress=in_progress,
        replica_start_s=measured,
        joiner_start_s=cold_start_of(joined),
    )


def moe_narrowing(
    svc: LLMService, conditions: list[dict[str, Any]], pods: list[PodView], wanted: int
) -> Narrowing | None:
    """For an elastic MoE service the autoscaler wants smaller: while a width change is under way, hold the
    replicas (the same width back); where the autoscaler widened it, narrow back instead of removing replicas
    (controllers/planners/growth.py). None when neither applies or no narrower width carries the demand."""
    spec = svc.spec
    if spec.model.architecture != "moe" or not spec.parallelism.elastic_expert or wanted >= spec.replicas:
        return None
    running = elastic_widths(svc, pods)
    if _true(conditions, ConditionType.RESCALING) is not None or not running.settled:
        # No replica goes while one is held out of routing for its resize: the others carry the load.
        hold = f"holding {spec.replicas} replica(s): an expert-parallel width change is under way"
        return Narrowing(spec.parallelism.expert, hold)
    raw = (svc.metadata.annotations or {}).get(L.AUTOSCALED_FROM_EXPERT)
    # SGLang's elastic EP only grows: its replicas go instead.
    if raw is None or not raw.isdigit() or spec.engine.type == "sglang":
        return None
    if _true(conditions, ConditionType.RESCALE_FAILED) or running.width != spec.parallelism.expert:
        return None
    gpu = first_gpu(svc)
    return choose_narrowing(
        model_of(spec.model),
        gpu,
        slo_of(svc),
        replicas=spec.replicas,
        wanted=wanted,
        width=running.width,
        base_width=int(raw),
        rank_gpus=running.rank_gpus,
    )


def widening_to_undo(svc: LLMService, conditions: list[dict[str, Any]], pods: list[PodView]) -> int | None:
    """The width to set spec.parallelism.expert back to when a widening the autoscaler asked for failed (the
    replicas stayed at their old width; whole replicas carry the growth instead), else None."""
    raw = (svc.metadata.annotations or {}).get(L.AUTOSCALED_FROM_EXPERT)
    if raw is None or _true(conditions, ConditionType.RESCALING) is not None:
        return None
    if _true(conditions, ConditionType.RESCALE_FAILED) is None:
        return None
    running = elastic_widths(svc, pods)
    return running.width if running.width != svc.spec.parallelism.expert else None
