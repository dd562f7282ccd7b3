"""kopf handlers: thin shells that read the watch-fed cache, call the pure planners, and apply their plans."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from adapters import operator_metrics as M
from adapters.cache import Change, ClusterCache, Informer, Obj
from adapters.engine_api import EngineClient, engine_url
from adapters.kube import ApiError, FieldManager, Kube, NetworkError
from autoscaler.cluster import ClusterForecast
from autoscaler.forecast import GENERATION_TOKEN_RATE, PROMPT_TOKEN_RATE, REQUEST_RATE
from catalogue.gpus import GPU_RESOURCE
from controllers.planners.conditions import already_applied, invalid_spec_status, set_condition
from controllers.planners.drain import draining_gangs
from controllers.planners.finetune import TrainerReport, plan_job
from controllers.planners.gangs import Owner, pdb_manifest, service_manifests
from controllers.planners.growth import Growth
from controllers.planners.llmservice import plan_service
from controllers.planners.lora import adapters_condition, adapters_status, publish, replica_actions
from controllers.planners.powerbudget import NodeView
from controllers.planners.powerbudget import report as power_report
from controllers.planners.snapshot import PodView, pod_view
from controllers.shells.autoscaling import (
    Autoscaler,
    decision_status,
    moe_growth,
    moe_narrowing,
    scrape_failure_events,
    widening_to_undo,
)
from controllers.shells.power import PowerManager
from controllers.shells.rescaling import is_joiner, rescale_service
from crds import labels as L
from crds.base import GROUP, VERSION
from crds.finetunejob import FineTuneJob
from crds.llmservice import LLMService
from crds.powerbudget import PowerBudget
from crds.reasons import ConditionType, EventType, Reason

log = logging.getLogger("ebbtide")
M_ = TypeVar("M_", bound=BaseModel)
FORECAST_QUANTILES = ("p50", "p90", "p99")  # the `quantile` label values the dashboard selects
CLUSTER_SERIES = {
    REQUEST_RATE: "requests_per_second",
    PROMPT_TOKEN_RATE: "prompt_tokens_per_second",
    GENERATION_TOKEN_RATE: "generation_tokens_per_second",
}


@dataclass
class Runtime:
    """What the handlers share: the API facade for writes, the watch-fed cache for reads, the engine client,
    settings, and whether this replica leads (for work started outside kopf's handlers). Set once at start-up."""

    kube: Kube
    cache: ClusterCache
    engines: EngineClient
    scheduler_name: str = "default-scheduler"
    resync_seconds: float = 10.0
    autoscaler: Autoscaler | None = None
    power: PowerManager | None = None  # keeps PowerBudgets under their watts; its headroom gates scale-ups
    deregistration_seconds: float = 5.0
    clock: Callable[[], float] = time.time
    leader: Callable[[], bool] = lambda: True
    namespace: str | None = None  # the one namespace this operator handles; all when None


def _ours(namespace: str) -> bool:
    """Whether cache events in this namespace are this replica's to act on now."""
    r = rt()
    return r.leader() and (r.namespace is None or r.namespace == namespace)


RUNTIME: Runtime | None = None
_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
_pending: dict[tuple[str, str, str], bool] = {}  # scheduled reconciles -> whether one asked for a full pass
_posting: set[asyncio.Task[None]] = set()  # Events on their way (a task nobody holds may be collected early)
EVENT_SOURCE = "ebbtide-operator"


RETRY_DELAY_S = 5.0
MAX_RETRY_DELAY_S = 120.0


def backoff_s(retry: int) -> float:
    """Delay before kopf's next try of a failed handler: doubling from RETRY_DELAY_S, capped."""
    return min(RETRY_DELAY_S * 2 ** min(retry, 10), MAX_RETRY_DELAY_S)


def rt() -> Runtime:
    if RUNTIME is None:
        raise RuntimeError("controllers.shells.handlers.RUNTIME is not configured")
    return RUNTIME


def _lock(key: tuple[str, str, str]) -> asyncio.Lock:
    return _locks.setdefault(key, asyncio.Lock())


def _event(body: dict[str, Any], type: str, reason: str, message: str) -> None:
    """Post an Event about an object in the background, best effort, as kopf posts its own. Through the facade,
    not kopf.event(): reconciles triggered by the cache run outside kopf's handlers, where kopf has no queue."""
    task = asyncio.get_running_loop().create_task(
        rt().kube.create_event(body, type, reason, message[:1000], EVENT_SOURCE)
    )
    _posting.add(task)
    task.add_done_callback(_posting.discard)


def _emit(body: dict[str, Any], events: list[tuple[str, str, str]]) -> None:
    for type_, reason, message in events:
        _event(body, type=type_, reason=reason, message=message[:1000])


async def _create_pods(kind: str, manifests: list[dict[str, Any]]) -> None:
    """Create a plan's pods side by side: a gang is bound only once all its members exist."""
    created = await asyncio.gather(*(rt().kube.create_pod(m) for m in manifests))
    M.PODS_CREATED.labels(kind).inc(sum(created))


async def _write_back(
    plural: str,
    namespace: str | None,
    name: str,
    body: dict[str, Any],
    events: list[tuple[str, str, str]],
    status: dict[str, Any],
    manager: FieldManager = FieldManager.RECONCILER,
) -> None:
    """Post the plan's Events and apply its status as `manager` unless the object already shows it."""
    _emit(body, events)
    if not already_applied(body.get("status") or {}, status):
        await rt().kube.apply_status(plural, namespace, name, status, manager)


def trigger(kind: str, namespace: str, name: str, delay: float = 0.2, full: bool = False) -> None:
    """Schedule a reconcile soon, coalescing bursts of pod events into one pass (a full one if any asked)."""
    key = (kind, namespace, name)
    if key in _pending:
        _pending[key] |= full
        return
    _pending[key] = full

    async def later() -> None:
        await asyncio.sleep(delay)
        full_pass = _pending.pop(key, full)
        fn = RECONCILERS[kind]
        try:
            await fn(namespace, name, full_pass)
        except kopf.TemporaryError as e:
            log.info("reconcile of %s %s/%s will be retried: %s", kind, namespace, name, e)
        except kopf.PermanentError as e:
            log.debug("%s %s/%s stays as reported until its spec changes: %s", kind, namespace, name, e)

    asyncio.get_running_loop().create_task(later())


def _timed(kind: str) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    def wrap(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def inner(namespace: str, name: str, full: bool) -> None:
            t0 = time.perf_counter()
            result = "ok"
            try:
                with M.IN_FLIGHT.labels(kind).track_inprogress():
                    async with _lock((kind, namespace, name)):
                        await fn(namespace, name, full)
            except ApiError as e:
                result = "error"
                # Conflicts and API faults pass; kopf retries with the backoff of the handler that called.
                raise kopf.TemporaryError(f"API error {e.status}: {e.reason}", delay=RETRY_DELAY_S) from e
            except NetworkError as e:
                result = "error"
                raise kopf.TemporaryError(f"API server unreachable: {e}", delay=RETRY_DELAY_S) from e
            except kopf.PermanentError:
                result = "invalid"
                raise
            except Exception:
                result = "error"
                raise
            finally:
                M.RECONCILES.labels(kind, result).inc()
                M.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - t0)

        return inner

    return wrap


async def _fetch(
    plural: str, kind: str, model: type[M_], namespace: str | None, name: str
) -> tuple[dict[str, Any], M_] | None:
    """The cached object (a copy) and its typed view; None when it is gone or being deleted. An invalid one is
    reported (condition and Event) and raises kopf.PermanentError."""
    r = rt()
    cached = r.cache.object(plural, namespace, name)
    if cached is None or cached["metadata"].get("deletionTimestamp"):
        return None
    body = copy.deepcopy(cached)
    try:
        return body, model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        message = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        M.SEMANTIC_ERRORS.labels(kind, Reason.INVALID_SPEC).inc()
        conditions = (body.get("status") or {}).get("conditions") or []
        status, events = invalid_spec_status(conditions, message, r.clock(), body["metadata"].get("generation"))
        await _write_back(plural, namespace, name, body, events, status)
        # Retrying cannot help until the user changes the object (an update runs the handlers again).
        raise kopf.PermanentError(message) from e


@_timed("LLMService")
async def reconcile_service(namespace: str, name: str, full: bool) -> None:
    r = rt()
    fetched = await _fetch("llmservices", "LLMService", LLMService, namespace, name)
    if fetched is None:
        return
    body, svc = fetched
    pods = [pod_view(p) for p in r.cache.pods.by_index("service", f"{namespace}/{name}")]
    # Rank pods that joined a replica in place belong to its width change (shells/rescaling.py), not its gang.
    gang_pods = [p for p in pods if not is_joiner(p)]
    now = r.clock()
    draining = draining_gangs(gang_pods, now, r.deregistration_seconds)
    plan = plan_service(
        svc,
        body["metadata"]["uid"],
        gang_pods,
        set(r.cache.priority_class_values()),
        now,
        r.scheduler_name,
        r.deregistration_seconds,
    )
    if plan.problem is not None:
        M.SEMANTIC_ERRORS.labels("LLMService", plan.problem.reason).inc()
    else:
        # Pods first: they are what the packer waits on; the Services and the PDB matter only once pods serve.
        await _create_pods("LLMService", plan.create)
        if full:
            owner = Owner("LLMService", name, namespace, body["metadata"]["uid"])
            manifests = [*service_manifests(owner, svc.spec), pdb_manifest(owner, svc.spec)]
            await asyncio.gather(
                *(
                    r.kube.ensure(m, r.cache.owned(m["kind"], m["metadata"]["namespace"], m["metadata"]["name"]))
                    for m in manifests
                )
            )
        by_replica: dict[int, list[PodView]] = {}
        for p in pods:
            by_replica.setdefault(p.replica, []).append(p)
        for replica in plan.start_drain:
            for p in by_replica.get(replica, []):
                # Leaving the Service first means no new request reaches a draining engine.
                await r.kube.patch_pod(
                    namespace,
                    p.name,
                    {"metadata": {"annotations": {L.DRAIN_STARTED: f"{now:.3f}"}, "labels": {L.ENTRYPOINT: None}}},
                )
        for pod in plan.delete:
            await r.kube.delete_pod(namespace, pod)
            M.PODS_DELETED.labels("LLMService", "scale-in-or-restart").inc()
        # vLLM's runtime LoRA routes (the simulated engine serves the same); SGLang's differ and are not driven.
        lora = svc.spec.adapters or (body.get("status") or {}).get("adapters")
        if lora and svc.spec.engine.type in ("vllm", "simulated"):
            await _sync_adapters(svc, pods, plan.events, plan.status, now)
        rescale = await rescale_service(
            r.kube, body, svc, pods, plan.status["conditions"], now, r.scheduler_name, r.deregistration_seconds
        )
        plan.events += rescale.events
        plan.status.update(rescale.status)
        if rescale.busy:
            trigger("LLMService", namespace, name, delay=1.0)
    await _write_back("llmservices", namespace, name, body, plan.events, plan.status)
    if plan.problem is not None:
        raise kopf.PermanentError(f"{plan.problem.reason}: {plan.problem.message}")
    M.DESIRED_REPLICAS.labels(namespace, name).set(svc.spec.replicas)
    M.SLO_TTFT.labels(namespace, name).set(svc.spec.scaling.slo.ttft_seconds)
    M.SLO_ITL.labels(namespace, name).set(svc.spec.scaling.slo.inter_token_latency_seconds)
    M.READY_REPLICAS.labels(namespace, name).set(plan.status.get("readyReplicas", 0))
    if plan.start_drain or draining:
        trigger("LLMService", namespace, name, delay=1.0)


async def _sync_adapters(
    svc: LLMService, pods: list[PodView], events: list[tuple[str, str, str]], status: dict[str, Any], now: float
) -> None:
    """Every ready serving replica holds exactly spec.adapters (vLLM's runtime LoRA routes); status.adapters and
    the AdaptersLoaded condition."""
    r = rt()
    held: list[dict[str, str]] = []
    refused: dict[str, str] = {}
    for pod in pods:
        if not pod.ready or pod.deleting or pod.labels.get(L.ROLE) not in ("server", "leader"):
            continue
        url = engine_url(pod, svc.spec.engine.port)
        loaded = await r.engines.adapters(url) if url else None
        if loaded is None:
            continue
        actions = replica_actions(svc.spec.adapters, loaded)
        for name in actions.unload:
            code, text = await r.engines.unload_adapter(url or "", name)
            if code == 200:
                loaded.pop(name, None)
                events.append((EventType.NORMAL, Reason.ADAPTER_UNLOADED, f"{name} unloaded from {pod.name}"))
        for name, path in actions.load:
            code, text = await r.engines.load_adapter(url or "", name, path)
            if code == 200:
                loaded[name] = path
                events.append((EventType.NORMAL, Reason.ADAPTER_LOADED, f"{name} loaded on {pod.name} from {path}"))
            else:
                refused[name] = f"{pod.name} answered HTTP {code}: {text[:200]}"
                events.append(
                    (EventType.WARNING, Reason.ADAPTER_LOAD_FAILED, f"{name} on {pod.name}: HTTP {code}: {text[:200]}")
                )
        held.append(loaded)
    status["adapters"] = adapters_status(svc.spec.adapters, held)
    cond = adapters_condition(svc.spec.adapters, refused)
    status["conditions"] = set_condition(
        status.get("conditions", []),
        ConditionType.ADAPTERS_LOADED,
        cond.loaded,
        cond.reason,
        cond.message,
        now,
        svc.metadata.generation,
    )


async def _publish(job: FineTuneJob, status: dict[str, Any], events: list[tuple[str, str, str]], now: float) -> None:
    """A succeeded job's adapter goes onto the LLMService spec.output.publishTo names (its condition: Published)."""
    r = rt()
    out, ns = job.spec.output, job.metadata.namespace or "default"
    if out is None or not out.publish_to or not status.get("adapter"):
        return
    body = r.cache.object("llmservices", ns, out.publish_to)
    try:
        service = LLMService.model_validate(body) if body is not None else None
    except ValidationError:
        service = None
    publication = publish(job, str(status["adapter"]), service)
    if publication is None:
        return
    if publication.adapters is not None:
        await r.kube.patch_object_spec("llmservices", ns, out.publish_to, {"adapters": publication.adapters})
    if publication.event is not None:
        events.append(publication.event)
    status["conditions"] = set_condition(
        status.get("conditions", []),
        ConditionType.PUBLISHED,
        publication.published,
        publication.reason,
        publication.message,
        now,
        job.metadata.generation,
    )


@_timed("FineTuneJob")
async def reconcile_job(namespace: str, name: str, full: bool) -> None:
    r = rt()
    fetched = await _fetch("finetunejobs", "FineTuneJob", FineTuneJob, namespace, name)
    if fetched is None:
        return
    body, job = fetched
    pods = [pod_view(p) for p in r.cache.pods.by_index("finetune", f"{namespace}/{name}")]
    now = r.clock()
    # A terminating worker still answers its metrics until it exits: that is where the SIGTERM checkpoint shows.
    rank0 = next(
        (p for p in pods if p.attempt == job.status.attempt and p.rank == 0 and p.phase == "Running"),
        None,
    )
    url = engine_url(rank0, job.spec.trainer.port) if rank0 else None
    report = (await r.engines.trainer_report(url) if url else None) or TrainerReport()
    classes = set(r.cache.priority_class_values())
    plan = plan_job(job, body["metadata"]["uid"], pods, report, classes, now, r.scheduler_name)
    await _create_pods("FineTuneJob", plan.create)
    for pod in plan.delete:
        await r.kube.delete_pod(namespace, pod, 0 if plan.delete_now else None)
        M.PODS_DELETED.labels("FineTuneJob", plan.status.get("phase", "")).inc()
    if plan.status.get("phase") == "Succeeded":
        await _publish(job, plan.status, plan.events, now)
    await _write_back("finetunejobs", namespace, name, body, plan.events, plan.status)
    if plan.status.get("phase") in ("Checkpointing",) or plan.delete:
        trigger("FineTuneJob", namespace, name, delay=1.0)


@_timed("PowerBudget")
async def reconcile_power(namespace: str, name: str, full: bool) -> None:
    r = rt()
    fetched = await _fetch("powerbudgets", "PowerBudget", PowerBudget, None, name)
    if fetched is None:
        return
    body, pb = fetched
    nodes = [
        NodeView(
            n["metadata"]["name"],
            n["metadata"].get("labels") or {},
            int((n.get("status") or {}).get("allocatable", {}).get(GPU_RESOURCE, "0")),
        )
        for n in r.cache.nodes.items()
    ]
    status, events = power_report(pb, nodes, r.clock())
    M.POWER_BUDGET.labels(name).set(pb.spec.budget_watts)
    await _write_back("powerbudgets", None, name, body, events, status)


async def autoscale(namespace: str, name: str) -> None:
    """One autoscaler tick for one LLMService: observe, decide (pure), write the scale subresource and status."""
    r = rt()
    if r.autoscaler is None:
        return
    key = f"{namespace}/{name}"
    body = r.cache.object("llmservices", namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        r.autoscaler.forget(key)
        return
    try:
        svc = LLMService.model_validate(body)
    except ValidationError:
        return  # the reconciler reports the invalid spec
    if svc.spec.scaling.policy == "none":
        r.autoscaler.forget(key)
        return
    raw = r.cache.pods.by_index("service", key)
    now = r.clock()
    before = r.autoscaler.last_observation.get(key)
    decision = await r.autoscaler.decide(key, svc, raw, [pod_view(p) for p in raw], now)
    M.AUTOSCALER_DECISIONS.labels(svc.spec.scaling.policy, "degraded" if decision.degraded else "ok").inc()
    observed = r.autoscaler.last_observation.get(key)
    if observed is not None:
        # An engine that answers 404/5xx or no metrics is never a sample: say so, once per new failure.
        failing = scrape_failure_events(before, observed)
        for _, _, message in failing:
            log.warning("LLMService %s: %s", key, message)
        _emit(body, failing)
    if observed is not None:
        M.OBSERVED_RPS_FOR.labels(namespace, name).set(observed.request_rate)
    for q in FORECAST_QUANTILES:
        if q in decision.forecast_quantiles:
            M.FORECAST_RPS_FOR.labels(namespace, name, q).set(decision.forecast_quantiles[q])
    publish_cluster_forecast(r.autoscaler.cluster.last)
    status_conditions = (body.get("status") or {}).get("conditions", [])
    views = [pod_view(p) for p in raw]
    undo = widening_to_undo(svc, status_conditions, views)
    if undo is not None:
        # The replicas stayed at their width (the engine refused, timed out, or has no elastic EP): the spec
        # follows them back, and the growth goes to whole replicas (below, and from then on).
        failed = next(c for c in status_conditions if c.get("type") == ConditionType.RESCALE_FAILED)
        await r.kube.patch_object_spec("llmservices", namespace, name, {"parallelism": {"expert": undo}})
        await r.kube.patch_object_metadata("llmservices", namespace, name, {L.AUTOSCALED_FROM_EXPERT: None})
        message = (
            f"EP {svc.spec.parallelism.expert} -> {undo}: the widening failed ({failed.get('reason')}); "
            "scaling by whole replicas instead"
        )
        _event(body, EventType.WARNING, failed.get("reason") or Reason.RESCALE_FAILED, message)
    growth = moe_growth(svc, status_conditions, views, raw, decision.replicas)
    if growth is not None:
        decision = replace(decision, replicas=growth.replicas, reason=f"{decision.reason}; {growth.message}")
        if growth.growth == Growth.WIDEN:
            await r.kube.patch_object_metadata(
                "llmservices", namespace, name, {L.AUTOSCALED_FROM_EXPERT: str(svc.spec.parallelism.expert)}
            )
            await r.kube.patch_object_spec("llmservices", namespace, name, {"parallelism": {"expert": growth.width}})
            _event(body, EventType.NORMAL, Reason.AUTOSCALED, growth.message)
    narrowing = moe_narrowing(svc, status_conditions, views, decision.replicas)
    if narrowing is not None:
        decision = replace(decision, replicas=svc.spec.replicas, reason=f"{decision.reason}; {narrowing.message}")
    if narrowing is not None and narrowing.width != svc.spec.parallelism.expert:
        if str(narrowing.width) == (svc.metadata.annotations or {}).get(L.AUTOSCALED_FROM_EXPERT):
            await r.kube.patch_object_metadata("llmservices", namespace, name, {L.AUTOSCALED_FROM_EXPERT: None})
        await r.kube.patch_object_spec("llmservices", namespace, name, {"parallelism": {"expert": narrowing.width}})
        _event(body, EventType.NORMAL, Reason.AUTOSCALED, narrowing.message)
    held = r.power.admit(svc, decision.replicas, svc.spec.replicas) if r.power is not None else None
    power_limited = None
    if held is not None and not held.allowed:
        # Never a silent breach: the scale-up waits for power, and the condition says why.
        power_limited = f"holding {svc.spec.replicas} replicas (wanted {decision.replicas}): {held.message}"
        if not any(
            c.get("type") == ConditionType.POWER_LIMITED and c.get("status") == "True"
            for c in (body.get("status") or {}).get("conditions", [])
        ):
            _event(body, EventType.WARNING, Reason.POWER_LIMITED, power_limited)
        decision = replace(decision, replicas=svc.spec.replicas)
    if decision.replicas != svc.spec.replicas:
        await r.kube.scale("llmservices", namespace, name, decision.replicas)
        # An MoE service that cannot widen says why, as a Warning of that reason.
        fallback = growth is not None and growth.reason == Reason.ELASTIC_EP_UNAVAILABLE
        _event(
            body,
            EventType.WARNING if fallback else EventType.NORMAL,
            Reason.ELASTIC_EP_UNAVAILABLE if fallback else Reason.AUTOSCALED,
            f"{svc.spec.replicas} -> {decision.replicas} replicas: {decision.reason}",
        )
    if decision.degraded and not any(
        c.get("type") == ConditionType.AUTOSCALER_DEGRADED and c.get("status") == "True"
        for c in (body.get("status") or {}).get("conditions", [])
    ):
        _event(body, type=EventType.WARNING, reason=Reason.AUTOSCALER_DEGRADED, message=decision.degraded[:1000])
    own = decision_status(body.get("status") or {}, decision, now, svc.metadata.generation, power_limited)
    if not already_applied(body.get("status") or {}, own):  # an idle service costs the API server nothing
        await r.kube.apply_status("llmservices", namespace, name, own, FieldManager.AUTOSCALER)


def publish_cluster_forecast(fc: ClusterForecast | None) -> None:
    """The whole cluster's forecast as gauges, one series per indicator (metric-style names) and quantile."""
    if fc is None:
        return
    M.CLUSTER_SERVICES.set(fc.services)
    for indicator, series in CLUSTER_SERIES.items():
        M.CLUSTER_OBSERVED.labels(series).set(fc.observed[indicator])
        for q, v in fc.peak[indicator].items():
            M.CLUSTER_FORECAST.labels(series, f"p{round(q * 100):d}").set(v)


RECONCILERS: dict[str, Callable[[str, str, bool], Awaitable[None]]] = {
    "LLMService": reconcile_service,
    "FineTuneJob": reconcile_job,
    "PowerBudget": reconcile_power,
}
_PLURALS = {"LLMService": "llmservices", "FineTuneJob": "finetunejobs", "PowerBudget": "powerbudgets"}


def register() -> None:
    """Register every handler with kopf (called by operator/main.py, so importing has no side effects)."""
    for kind in _PLURALS:
        reconcile = RECONCILERS[kind]

        def make(kind: str = kind, reconcile: Callable[[str, str, bool], Awaitable[None]] = reconcile) -> None:
            async def on_change(namespace: str | None, name: str, retry: int = 0, **_: Any) -> None:
                try:
                    await reconcile(namespace or "", name, True)
                except kopf.TemporaryError as e:
                    raise kopf.TemporaryError(str(e), delay=backoff_s(retry)) from e

            async def on_timer(namespace: str | None, name: str, **_: Any) -> None:
                # The periodic resync also notices what a spec change cannot (a PriorityClass created later).
                try:
                    await reconcile(namespace or "", name, True)
                except kopf.TemporaryError as e:
                    log.info("periodic reconcile of %s %s: %s", kind, name, e)
                except kopf.PermanentError as e:
                    log.debug("periodic reconcile of %s %s: still invalid: %s", kind, name, e)

            res = (GROUP, VERSION, _PLURALS[kind])
            kopf.on.create(*res, id=f"{kind}-create")(on_change)
            kopf.on.update(*res, id=f"{kind}-update")(on_change)
            kopf.on.resume(*res, id=f"{kind}-resume")(on_change)
            kopf.timer(*res, id=f"{kind}-resync", interval=rt().resync_seconds, initial_delay=1.0)(on_timer)

        make()

    if rt().autoscaler is not None:

        async def on_autoscale(namespace: str | None, name: str, **_: Any) -> None:
            try:
                await autoscale(namespace or "", name)
            except ApiError as e:
                log.info("autoscaler tick of %s/%s failed: %s", namespace, name, e.reason)

        interval = rt().autoscaler.interval_s  # type: ignore[union-attr]
        kopf.timer(GROUP, VERSION, "llmservices", id="LLMService-autoscale", interval=interval, initial_delay=interval)(
            on_autoscale
        )


def on_pod_change(type_: Change, old: Obj | None, new: Obj | None) -> None:
    """A cached pod changed: reconcile its owner soon (on the leader; kopf's handlers run only there too)."""
    obj = new or old
    if obj is None or not _ours(obj["metadata"]["namespace"]):
        return
    labels = obj["metadata"].get("labels") or {}
    for label, kind in ((L.SERVICE, "LLMService"), (L.FINETUNE, "FineTuneJob")):
        if labels.get(label):
            trigger(kind, obj["metadata"]["namespace"], labels[label])


def on_object_change(kind: str, informer: Informer) -> Callable[[Change, Obj | None, Obj | None], None]:
    """A cached LLMService or FineTuneJob appeared, its spec changed or its deletion began: reconcile it from the
    cache.

    kopf's own create and update handlers may run before this replica's cache has the object or its new spec, and
    then find nothing to do: without this pass a new object would wait for its first periodic resync (the scale
    benchmark's tail). The first list is left to kopf's resume handlers."""

    def listener(type_: Change, old: Obj | None, new: Obj | None) -> None:
        if new is None or not _ours(new["metadata"]["namespace"]):
            return
        if old is None:
            if informer.synced.is_set():
                trigger(kind, new["metadata"]["namespace"], new["metadata"]["name"], full=True)
            return
        before, after = old["metadata"], new["metadata"]
        if before.get("generation") != after.get("generation") or (
            after.get("deletionTimestamp") and not before.get("deletionTimestamp")
        ):
            trigger(kind, after["namespace"], after["name"], full=True)

    return listener


def count_managed(kind: str, informer: Informer) -> Callable[[Change, Obj | None, Obj | None], None]:
    """Keep `ebbtide_managed_objects{kind}` at the number of cached objects of that kind."""

    def listener(type_: Change, old: Obj | None, new: Obj | None) -> None:
        M.MANAGED.labels(kind).set(len(informer))

    return listener


def count_backlog(kind: str) -> Callable[[Change, Obj | None, Obj | None], None]:
    """Keep `ebbtide_reconcile_backlog{kind}` at the number of cached objects whose status does not yet report
    their current generation: new objects and spec changes waiting for a reconcile."""
    behind: set[tuple[str, str]] = set()

    def listener(type_: Change, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        if obj is None:
            return
        meta = obj["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        observed = (obj.get("status") or {}).get("observedGeneration")
        if new is None or meta.get("deletionTimestamp") or observed == meta.get("generation"):
            behind.discard(key)
        else:
            behind.add(key)
        M.BACKLOG.labels(kind).set(len(behind))

    return listener


def listen(cache: ClusterCache) -> None:
    """Wire the cache's events to the reconcile triggers (called once the cache exists)."""
    cache.pods.listen(on_pod_change)
    cache.llmservices.listen(on_object_change("LLMService", cache.llmservices))
    cache.finetunejobs.listen(on_object_change("FineTuneJob", cache.finetunejobs))
    for kind, informer in (
        ("LLMService", cache.llmservices),
        ("FineTuneJob", cache.finetunejobs),
        ("PowerBudget", cache.powerbudgets),
    ):
        informer.listen(count_managed(kind, informer))
    cache.llmservices.listen(count_backlog("LLMService"))
    cache.finetunejobs.listen(count_backlog("FineTuneJob"))
