"""Parity: the operator's autoscaler shell and the discrete-event simulator decide alike, tick by tick.

One trace is simulated; every tick the simulator records the metrics pages it scraped from its replicas and
the replicas it had. The same ticks are then fed through the operator's path: `Autoscaler.decide` (the shell
`handlers.autoscale` calls) with the real `ServiceMetricsCollector` behind a scraper that answers with the
recorded pages (the metrics-source port), the recorded time as the clock, and the replicas as the pods and
LLMService an API server would hold (the cluster port). Both must make the same decisions, reasons included.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from adapters.engine_metrics import PodTarget, ServiceMetricsCollector
from adapters.store import MemoryStore
from autoscaler.loop import ScalingKnobs
from autoscaler.observation import ScrapeResult
from controllers.planners.snapshot import pod_view
from controllers.shells.autoscaling import Autoscaler
from crds.llmservice import LLMService
from simulator.cluster import ClusterConfig, ClusterSimulator, ReplicaRecord, SimTick
from simulator.traces import Trace

INTERVAL = 15.0
COLD = 60.0  # the simulated replicas' real cold start
ASSUMED = 180.0  # the operator's --default-cold-start-seconds, until one is measured
EPOCH = 1_780_000_000.0  # virtual time 0 as an API timestamp


def llm_service(replicas: int, ready: int, policy: str, tuning: dict[str, float]) -> LLMService:
    """The LLMService an API server would hold at a tick."""
    knob = {"forecastCoverage": 1.0 - tuning["risk"]} if "risk" in tuning else {}
    if "target_utilization" in tuning:
        knob = {"targetUtilization": tuning["target_utilization"]}
    return LLMService.model_validate(
        {
            "metadata": {"name": "svc", "namespace": "ns", "generation": 1},
            "spec": {
                "model": {"name": "llama-3.1-8b", "source": "hf://meta-llama/Llama-3.1-8B-Instruct", "parametersB": 8},
                "engine": {"type": "simulated"},
                "gpu": {"count": 1, "types": ["H100"]},
                "replicas": replicas,
                "scaling": {
                    "minReplicas": 1,
                    "maxReplicas": 8,
                    "policy": policy,
                    "scaleDownStabilizationSeconds": 120,
                    "slo": {"ttftSeconds": 2.0, "interTokenLatencySeconds": 0.1, "attainment": 0.99},
                    **knob,
                },
            },
            "status": {"readyReplicas": ready},
        }
    )


def stamp(t: float) -> str:
    return datetime.fromtimestamp(EPOCH + t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pods_of(replicas: Sequence[ReplicaRecord]) -> list[dict[str, Any]]:
    """The pods of the simulated replicas: created when requested, Ready since they became ready (the replicas
    ready at the start were warm before it, so their Ready transition is not known)."""
    out = []
    for r in replicas:
        conditions = []
        if r.ready_at is not None:
            ready: dict[str, str] = {"type": "Ready", "status": "True"}
            if not r.initial:
                ready["lastTransitionTime"] = stamp(r.ready_at)
            conditions.append(ready)
        out.append(
            {
                "metadata": {"name": f"svc-r{r.replica_id}", "creationTimestamp": stamp(r.requested_at)},
                "status": {"phase": "Running" if r.ready_at is not None else "Pending", "conditions": conditions},
            }
        )
    return out


class RecordedScraper:
    """The pod scraper, faked at the port: answers with the page the simulator scraped at that tick."""

    def __init__(self) -> None:
        self.page: ScrapeResult | None = None

    async def scrape(self, targets: Sequence[PodTarget]) -> ScrapeResult:
        assert self.page is not None
        return self.page


def step_trace(seed: int = 1) -> Trace:
    """Poisson arrivals, 1,000-token prompts and 200-token answers: 8 req/s, a ramp to 50, a plateau, 6."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(1800)
    rate = np.interp(seconds, [0, 600, 900, 1380, 1400, 1800], [8, 8, 50, 50, 6, 6])
    counts = rng.poisson(rate)
    arrival = np.repeat(seconds, counts) + rng.uniform(0.0, 1.0, counts.sum())
    arrival.sort()
    n = len(arrival)
    prompt = np.maximum(16, rng.normal(1000, 300, n)).astype(np.int64)
    output = np.maximum(8, rng.normal(200, 60, n)).astype(np.int64)
    return Trace("step", arrival, prompt, output, 1800.0)


@pytest.mark.parametrize(("policy", "tuning"), [("forecast", {"risk": 0.1}), ("reactive", {"target_utilization": 0.6})])
async def test_operator_and_simulator_make_the_same_decisions_on_one_trace(
    policy: str, tuning: dict[str, float]
) -> None:
    scraper = RecordedScraper()
    shell = Autoscaler(
        metrics=ServiceMetricsCollector(scraper),  # type: ignore[arg-type]
        store=MemoryStore(),
        interval_s=INTERVAL,
        default_cold_start_s=ASSUMED,
    )
    knobs: ScalingKnobs = shell.knobs(llm_service(1, 1, policy, tuning))
    config = ClusterConfig(
        service="ns/svc",
        model="llama-3.1-8b",
        gpu="H100",
        tensor_parallel=1,
        cold_start_s=COLD,
        initial_replicas=1,
        bounds=knobs.bounds,
        slo=knobs.slo,
        policy=knobs.policy,
        tuning=knobs.tuning,
    )
    assert config.knobs() == knobs  # the simulated service is the LLMService, profile from the same catalogue

    ticks: list[SimTick] = []
    ClusterSimulator(config, on_tick=ticks.append).run(step_trace(), 1800.0)

    operator = []
    for tick in ticks:
        seen = tick.step.observation
        svc = llm_service(seen.replicas, seen.ready_replicas, policy, tuning)
        raw = pods_of(tick.replicas)
        scraper.page = tick.scrape
        operator.append(await shell.decide("ns/svc", svc, raw, [pod_view(p) for p in raw], tick.now))

    simulated = [t.step.decision for t in ticks]
    assert [d.replicas for d in operator] == [d.replicas for d in simulated]
    assert operator == simulated
    # The trace exercised the loop: a stale first tick, scale-up and scale-in, and the measured cold start.
    counts = [d.replicas for d in simulated]
    assert ticks[0].step.observation.stale and max(counts) >= 3 and counts[-1] < max(counts)
    assert ticks[0].step.bounds.cold_start_s == ASSUMED and ticks[-1].step.bounds.cold_start_s == COLD
