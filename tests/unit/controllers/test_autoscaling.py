"""The autoscaler shell: spec.scaling knobs reach the policy, retuning keeps what it learned, the whole-cluster
forecast keeps its history and state in the store, and a restarted operator reads the history back."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from redis import asyncio as aioredis

from adapters.engine_metrics import PodScraper, PodTarget, ServiceMetricsCollector
from adapters.store import MemoryStore, RedisStore
from autoscaler.forecast import EbbtideForecaster
from autoscaler.loop import ScalingLoop
from autoscaler.policies import EbbtideForecast, ReactiveTargetTracking
from autoscaler.types import SLO, ScalingBounds, ScalingDecision, ScrapeFailure, ServiceObservation
from controllers.planners.gangs import Owner, replica_pods
from controllers.planners.growth import Growth
from controllers.planners.snapshot import PodView, pod_view
from controllers.shells.autoscaling import (
    CLUSTER,
    Autoscaler,
    decision_status,
    moe_growth,
    policy_knobs,
    scrape_failure_events,
    widening_to_undo,
)
from crds.llmservice import LLMService
from crds.reasons import ConditionType, EventType, Reason
from tests.unit.autoscaler.vllm_text import exposition
from tests.unit.conftest import RedisServer
from tests.unit.controllers.builders import service


def autoscaler(store: MemoryStore | None = None) -> Autoscaler:
    return Autoscaler(
        metrics=ServiceMetricsCollector(scraper=None),  # type: ignore[arg-type]
        store=store or MemoryStore(),
        interval_s=30.0,
    )


def scaling(**fields: object) -> dict[str, object]:
    return {"scaling": {"minReplicas": 1, "maxReplicas": 8, **fields}}


def obs(t: float, rate: float) -> ServiceObservation:
    return ServiceObservation(
        "svc", t, 2, 2, rate, rate * 500, rate * 200, queue_length=0, running=rate, kv_cache_usage=0.2
    )


def test_coverage_and_target_utilisation_reach_their_own_policy_only() -> None:
    assert policy_knobs(service(**scaling(forecastCoverage=0.9))) == {"risk": 0.1}
    assert policy_knobs(service(**scaling(policy="reactive", targetUtilization=0.8))) == {"target_utilization": 0.8}
    assert policy_knobs(service(**scaling(policy="reactive", forecastCoverage=0.9))) == {}
    assert policy_knobs(service(**scaling())) == {}


def loop_for(shell: Autoscaler, svc: LLMService) -> ScalingLoop:
    return shell.loop_for("ns/svc", shell.knobs(svc))


def test_forecast_policy_uses_the_coverage_set_in_the_spec() -> None:
    policy = loop_for(autoscaler(), service(**scaling(forecastCoverage=0.75))).policy
    assert isinstance(policy, EbbtideForecast)
    assert policy.risk == pytest.approx(0.25)
    reactive = loop_for(autoscaler(), service(**scaling(policy="reactive", targetUtilization=0.5))).policy
    assert isinstance(reactive, ReactiveTargetTracking)
    assert reactive.target_utilization == 0.5


def test_retuning_the_coverage_keeps_the_learned_history() -> None:
    shell = autoscaler()
    loop = loop_for(shell, service(**scaling(forecastCoverage=0.9)))
    before = loop.policy
    assert loop_for(shell, service(**scaling(forecastCoverage=0.9))).policy is before
    for i in range(40):
        before.decide(obs(30.0 * i, 10.0 + i % 3), ScalingBounds(max_replicas=8), SLO())
    learned = loop.to_state()
    after = loop_for(shell, service(**scaling(forecastCoverage=0.99))).policy
    assert after is not before and after.risk == pytest.approx(0.01)  # type: ignore[attr-defined]
    assert loop.to_state() == learned


def test_out_of_range_knobs_are_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="forecastCoverage"):
        service(**scaling(forecastCoverage=1.5))
    with pytest.raises(ValidationError, match="targetUtilization"):
        service(**scaling(policy="reactive", targetUtilization=0))


async def test_the_cluster_forecast_keeps_its_history_and_state_in_the_store() -> None:
    store = MemoryStore()
    shell = autoscaler(store)
    for k in range(20):
        for svc, rate in (("a/chat", 4.0), ("b/code", 2.0 + k % 3)):
            shell.cluster.observe(svc, obs(30.0 * k, rate), 210.0)
            await shell.tick_cluster(30.0 * k)
    history = await store.range(CLUSTER, "request_rate", 0.0, 600.0)
    # Each feed sums every service's latest rates: b/code's from its tick one interval before.
    assert len(history) == 20 and history[-1][1] == pytest.approx(4.0 + 2.0 + 18 % 3)
    assert shell.cluster.last is not None and shell.cluster.last.services == 2

    restarted = autoscaler(store)
    restarted.cluster.observe("a/chat", obs(600.0, 4.0), 210.0)
    await restarted.tick_cluster(600.0)
    # The forecaster resumed from the state saved at the 20th feed, then saw one more.
    assert restarted.cluster.to_state()["forecaster"]["n"] == 21


async def test_a_failing_cluster_forecaster_does_not_stop_the_services() -> None:
    class Broken(EbbtideForecaster):
        def observe(self, t: float, values: Mapping[str, float]) -> None:
            raise RuntimeError("boom")

    shell = autoscaler()
    shell.cluster.forecaster = Broken()
    shell.cluster.observe("a/chat", obs(0.0, 4.0), 210.0)
    assert await shell.tick_cluster(0.0) is None


class Ticking:
    """The metrics-source port, faked: each tick answers with the observation scripted for the test's clock."""

    def __init__(self, rates: dict[float, float]) -> None:
        self.rates = rates
        self.now = 0.0

    async def observe(
        self, service: str, targets: Sequence[PodTarget], *, replicas: int, ready_replicas: int
    ) -> ServiceObservation:
        return obs(self.now, self.rates[self.now])

    def forget(self, service: str) -> None:
        pass


async def run_ticks(shell: Autoscaler, source: Ticking, times: Sequence[float]) -> list[ScalingDecision]:
    svc = service(**scaling())
    out = []
    for t in times:
        source.now = t
        out.append(await shell.decide("ns/svc", svc, [], [], t))
    return out


async def test_a_restarted_operator_reads_the_history_back_before_its_first_decision(
    redis_server: RedisServer,
) -> None:
    rng = np.random.default_rng(5)
    times = [30.0 * i for i in range(26)]
    rates = {t: 6.0 + 2.0 * math.sin(t / 600) + rng.normal(0.0, 0.3) for t in times}

    never_stopped = Ticking(rates)
    reference = (
        await run_ticks(Autoscaler(metrics=never_stopped, store=MemoryStore(), interval_s=30.0), never_stopped, times)
    )[-1]

    before, after, state_only = Ticking(rates), Ticking(rates), Ticking(rates)
    stores = [RedisStore.from_url(redis_server.url) for _ in range(3)]
    try:
        # 25 ticks, state saved at the 10th and 20th: the last five live only in the Redis history.
        await run_ticks(Autoscaler(metrics=before, store=stores[0], interval_s=30.0), before, times[:25])
        restarted = Autoscaler(metrics=after, store=stores[1], interval_s=30.0)
        first = (await run_ticks(restarted, after, times[25:]))[0]
        assert first.forecast_quantiles == pytest.approx(reference.forecast_quantiles)
        policy = restarted.loops["ns/svc"].to_state()
        assert policy is not None and policy["forecaster"]["n"] == 26
        assert restarted.cluster.to_state()["forecaster"]["n"] == 26

        # The same restart with the history gone (state only) misses those five ticks and forecasts otherwise.
        raw = aioredis.Redis.from_url(redis_server.url)
        try:
            await raw.delete(*[k async for k in raw.scan_iter("ebbtide:hist:*")])
        finally:
            await raw.aclose()
        lost = (
            await run_ticks(Autoscaler(metrics=state_only, store=stores[2], interval_s=30.0), state_only, times[25:])
        )[0]
        assert lost.forecast_quantiles != pytest.approx(reference.forecast_quantiles)
    finally:
        for s in stores:
            await s.close()


def ready_pod(name: str, ip: str) -> PodView:
    return PodView(name, {}, {}, "Running", True, False, "node-0", None, ip)


async def test_engines_answering_404_on_metrics_degrade_the_autoscaler_naming_pods_url_and_status() -> None:
    """SGLang without --enable-metrics answers 404 on /metrics: every tick is stale, and the user must learn why
    from the condition and the Events, not only see replicas that never move."""
    answers: dict[str, int] = {"10.0.0.1": 404, "10.0.0.2": 404}

    def engine(request: httpx.Request) -> httpx.Response:
        status = answers[request.url.host]
        return httpx.Response(status, text=exposition() if status == 200 else '{"detail":"Not Found"}')

    svc = service(**scaling(policy="reactive"))
    pods = [ready_pod("svc-0", "10.0.0.1"), ready_pod("svc-1", "10.0.0.2")]
    now = [0.0]
    async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as client:
        shell = Autoscaler(ServiceMetricsCollector(PodScraper(client, lambda: now[0])), MemoryStore(), 30.0)
        decisions, events = [], []
        for t in (0.0, 30.0, 60.0):
            now[0] = t
            before = shell.last_observation.get("ns/svc")
            decisions.append(await shell.decide("ns/svc", svc, [], pods, t))
            events.append(scrape_failure_events(before, shell.last_observation["ns/svc"]))
        answers["10.0.0.2"] = 200
        now[0] = 90.0
        before = shell.last_observation["ns/svc"]
        await shell.decide("ns/svc", svc, [], pods, 90.0)
        one_down = scrape_failure_events(before, shell.last_observation["ns/svc"])

    assert all(d.replicas == 2 and d.degraded_reason == Reason.METRICS_UNAVAILABLE for d in decisions)
    assert decisions[-1].degraded == (
        "metrics stale or missing: 2/2 engines answered HTTP 404 on /metrics (pod svc-0: GET "
        "http://10.0.0.1:8000/metrics answered HTTP 404): is --enable-metrics set? (SGLang serves /metrics only "
        "with it)"
    )
    status = decision_status({}, decisions[-1], 60.0, 1)
    cond = next(c for c in status["conditions"] if c["type"] == ConditionType.AUTOSCALER_DEGRADED)
    assert (cond["status"], cond["reason"]) == ("True", Reason.METRICS_UNAVAILABLE)
    assert "2/2 engines answered HTTP 404 on /metrics" in cond["message"]
    # One Warning per failing pod when its failure starts, naming pod, URL and status; not again every tick.
    assert events[0] == [
        (EventType.WARNING, Reason.METRICS_UNAVAILABLE, f"engine pod svc-{i}: GET http://10.0.0.{i + 1}:8000/metrics "
         "answered HTTP 404") for i in (0, 1)
    ]  # fmt: skip
    assert events[1] == events[2] == [] and one_down == []


def test_a_failure_that_changes_status_is_reported_again() -> None:
    url = "http://10.0.0.1:8000/metrics"
    first = replace(obs(0.0, 1.0), scrape_failures=(("svc-0", ScrapeFailure(url, 404, "HTTP 404 Not Found")),))
    then = replace(obs(30.0, 1.0), scrape_failures=(("svc-0", ScrapeFailure(url, 503, "HTTP 503")),))
    assert scrape_failure_events(first, then) == [
        (EventType.WARNING, Reason.METRICS_UNAVAILABLE, f"engine pod svc-0: GET {url} answered HTTP 503")
    ]
    assert scrape_failure_events(then, then) == []


# Elastic MoE services: widen expert parallelism or add whole replicas (controllers/planners/growth.py).
SLOW_COLD_START_S = 3600.0  # no in-place resize takes this long
FAST_COLD_START_S = 1.0  # no in-place resize is this quick


def elastic_moe(expert: int = 2, annotations: dict[str, str] | None = None) -> LLMService:
    return LLMService.model_validate(
        {
            "metadata": {"name": "lite", "namespace": "ns", "uid": "u1", "annotations": annotations or {}},
            "spec": {
                "model": {"name": "deepseek-v2-lite", "source": "hf://deepseek-ai/DeepSeek-V2-Lite",
                          "parametersB": 15.7, "architecture": "moe", "experts": 64, "expertsPerToken": 6,
                          "activeParametersB": 2.4},
                "engine": {"type": "vllm"},
                "gpu": {"count": 2, "types": ["H100"]},
                "parallelism": {"tensor": 2, "expert": expert, "elasticExpert": True, "maxExpert": 8},
                "replicas": 1,
            },
        }
    )  # fmt: skip


def running_at(width: int, cold_start_s: float) -> tuple[list[dict[str, Any]], list[PodView]]:
    """One replica's entry pod at `width`, created `cold_start_s` before it became Ready."""
    [manifest] = replica_pods(Owner("LLMService", "lite", "ns", "u1"), elastic_moe(width).spec, 0, "ebbtide")
    manifest["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    ready_at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=cold_start_s)
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": ready_at.strftime("%Y-%m-%dT%H:%M:%SZ")}
    manifest["status"] = {"phase": "Running", "conditions": [ready]}
    return [manifest], [pod_view(manifest)]


def condition_(type_: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message}


def test_an_elastic_moe_service_widens_when_a_whole_replica_would_come_later() -> None:
    raw, pods = running_at(2, SLOW_COLD_START_S)
    choice = moe_growth(elastic_moe(2), [], pods, raw, wanted=2)
    assert choice is not None and choice.growth == Growth.WIDEN and choice.replicas == 1 and choice.width > 2
    assert choice.replica_s == SLOW_COLD_START_S, "the cold start measured on the service's own pods"
    assert choice.widen_s is not None and f"~{choice.widen_s:.0f} s" in choice.message
    assert f"~{SLOW_COLD_START_S:.0f} s" in choice.message


def test_an_elastic_moe_service_adds_a_replica_when_a_cold_start_is_sooner() -> None:
    raw, pods = running_at(2, FAST_COLD_START_S)
    choice = moe_growth(elastic_moe(2), [], pods, raw, wanted=2)
    assert choice is not None and choice.growth == Growth.REPLICAS and choice.replicas == 2 and choice.width == 2
    assert "whole replicas sooner" in choice.message


def test_after_a_failed_widening_growth_is_by_whole_replicas_and_says_why() -> None:
    raw, pods = running_at(2, SLOW_COLD_START_S)
    why = "replica 0 EP 2 -> 4: the engine has no /scale_elastic_ep (HTTP 404)"
    failed = [condition_("RescaleFailed", "ElasticEPUnavailable", why)]
    choice = moe_growth(elastic_moe(2), failed, pods, raw, wanted=2)
    assert choice is not None and choice.growth == Growth.REPLICAS and choice.reason == Reason.ELASTIC_EP_UNAVAILABLE
    assert why in choice.message and "ElasticEPUnavailable" in choice.message


def test_a_widening_under_way_holds_the_replica_count() -> None:
    raw, pods = running_at(2, FAST_COLD_START_S)
    rescaling = [condition_("Rescaling", "Rescaling", "replica 0 EP 2 -> 4: joiners ready")]
    held = moe_growth(elastic_moe(4), rescaling, pods, raw, wanted=2)
    assert held is not None and held.growth == Growth.WAIT and held.replicas == 1
    not_started = moe_growth(elastic_moe(4), [], pods, raw, wanted=2)
    assert not_started is not None and not_started.growth == Growth.WAIT, "the spec asks a width not yet run"


def test_only_elastic_moe_services_that_grow_are_asked() -> None:
    raw, pods = running_at(2, SLOW_COLD_START_S)
    assert moe_growth(elastic_moe(2), [], pods, raw, wanted=1) is None
    assert moe_growth(service(1), [], [], [], wanted=2) is None


def test_a_failed_widening_the_autoscaler_asked_for_is_undone_to_the_running_width() -> None:
    _, pods = running_at(2, SLOW_COLD_START_S)
    mine = {"ebbtide.dev/autoscaled-from-expert": "2"}
    failed = [condition_("RescaleFailed", "ElasticEPUnavailable", "HTTP 404")]
    assert widening_to_undo(elastic_moe(4, mine), failed, pods) == 2
    assert widening_to_undo(elastic_moe(4), failed, pods) is None, "a width the user asked for stays"
    assert widening_to_undo(elastic_moe(4, mine), [], pods) is None, "nothing failed"
    under_way = [*failed, condition_("Rescaling", "Rescaling", "")]
    assert widening_to_undo(elastic_moe(4, mine), under_way, pods) is None
