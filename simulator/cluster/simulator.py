"""The discrete-event cluster simulator: one service, N replicas, its scaling loop, virtual time.

Events live on a heap ordered by (virtual time, sequence number): replica engine wake-ups, replicas
becoming ready after their cold start, and decision ticks every `bounds.decision_interval_s`. Arrivals are
read in order from the trace. At each tick the simulator scrapes its ready replicas (metrics.py: vLLM's
counters, gauges and histograms), aggregates the scrape with `autoscaler.observation.ScrapeAggregator` and
ticks the service's `autoscaler.loop.ScalingLoop` — the same aggregation and the same loop the operator
runs, with the virtual clock, the simulated engines and the simulated replicas as its ports — then applies
the decision: new replicas start (cold start, GPUs held from binding), surplus ones drain (no new requests,
in-flight ones finish, then removal). Requests are routed to the ready replica with the fewest outstanding
requests; with none ready they wait at the gateway and fail after `gateway_timeout_s`.

So the observation has vLLM's semantics, as the operator's has: the request rate counts requests that
completed in the interval (arrivals show up as a growing queue), TTFT quantiles come from the deltas of the
TTFT histogram, ITL quantiles from the inter-token-latency histogram (every token gap); draining replicas
and requests waiting at the gateway are not scraped; the first tick has no previous scrape and is stale.
The cold start the loop plans with is measured from the replicas (creation to ready), like the operator's
from its pods. Request outcomes (`SimResult.summary`) judge ITL per request as its mean gap, which is what
the SLO bounds.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Literal

import numpy as np

from autoscaler.capacity import EngineProfile
from autoscaler.loop import LoopDecision, PolicyFactory, ScalingKnobs, ScalingLoop, crd_policies
from autoscaler.observation import ScrapeAggregator, ScrapeResult
from autoscaler.profile import engine_profile
from autoscaler.types import SLO, ScalingBounds, ScalingPolicy, ServiceObservation
from catalogue.gpus import lookup_gpu
from catalogue.models import lookup_model
from catalogue.perf import PerfModel
from simulator.cluster.metrics import EngineExposition
from simulator.cluster.records import OutcomeAccumulator, RequestLog
from simulator.cluster.replica import CachedStepCost, FastReplica, IntervalStats, ReplicaModel, StepCost
from simulator.cluster.seams import PackingPolicy, PowerPolicy, ReplicaRequest, ReplicaView
from simulator.cluster.stepped import SteppedReplica
from simulator.loadgen.summary import LatencySummary
from simulator.traces import Trace

EngineKind = Literal["fast", "stepped"]

_INF = math.inf


@dataclass(frozen=True)
class ClusterConfig:
    """One simulated service: model, hardware, engine limits, lifecycle timings, scaling knobs and SLO."""

    service: str = "llm"
    model: str = "llama-3.1-70b"  # catalogue name (catalogue.models)
    gpu: str = "H100"  # GPU short name or product label (catalogue.gpus)
    tensor_parallel: int = 4  # GPUs per replica
    max_num_batched_tokens: int = 8192  # vLLM token budget per engine step
    max_num_seqs: int = 256  # vLLM running-sequence cap
    image_pull_s: float = 60.0  # cold start part 1: pulling the engine image
    load_gbps: float = 2.0  # cold start part 2: reading the weights at this rate
    cold_start_s: float | None = None  # overrides the two above when set
    initial_replicas: int = 1  # ready at t = 0
    bounds: ScalingBounds = field(default_factory=ScalingBounds)  # cold_start_s: what the loop assumes until measured
    slo: SLO = field(default_factory=SLO)
    policy: str = "forecast"  # as spec.scaling.policy (or a baseline the simulator's policy factory knows)
    tuning: Mapping[str, float] = field(default_factory=dict)  # the policy's knobs, as from spec.scaling
    profile: EngineProfile | None = None  # the policies' seed capacity; None: from the catalogue, as the operator
    engine: EngineKind = "fast"  # FastReplica, or the engine's own BatchScheduler stepped ("stepped")
    gateway_timeout_s: float = 60.0  # a request waiting for any ready replica fails after this
    drain_tail_s: float = 3600.0  # after the trace ends, in-flight requests may finish within this

    def __post_init__(self) -> None:
        if lookup_model(self.model) is None:
            raise ValueError(f"unknown model {self.model!r}")
        if lookup_gpu(self.gpu) is None:
            raise ValueError(f"unknown GPU {self.gpu!r}")
        if self.tensor_parallel < 1 or self.initial_replicas < 0:
            raise ValueError("tensor_parallel must be >= 1 and initial_replicas >= 0")
        if self.bounds.decision_interval_s <= 0:
            raise ValueError("bounds.decision_interval_s must be positive")

    def perf(self, power_limit_w: float | None = None) -> PerfModel:
        """The replica performance model, optionally under a per-GPU power limit."""
        model = lookup_model(self.model)
        gpu = lookup_gpu(self.gpu)
        assert model is not None and gpu is not None
        perf = PerfModel(model, gpu, self.tensor_parallel, power_limit_w)
        perf.require_fit()
        return perf

    def knobs(self) -> ScalingKnobs:
        """The service's scaling knobs, as the operator reads them from an LLMService."""
        profile = self.profile
        if profile is None:
            model = lookup_model(self.model)
            gpu = lookup_gpu(self.gpu)
            assert model is not None and gpu is not None
            profile = engine_profile(model, gpu, self.tensor_parallel, self.slo)
        return ScalingKnobs(self.policy, dict(self.tuning), self.bounds, self.slo, profile)

    def resolved_cold_start_s(self) -> float:
        """Seconds from binding a replica to it serving."""
        if self.cold_start_s is not None:
            return self.cold_start_s
        return self.perf().cold_start_seconds(self.image_pull_s, self.load_gbps)


class _Replica:
    """Lifecycle of one replica gang: pending -> starting -> ready -> draining -> gone."""

    __slots__ = (
        "bound_at",
        "busy_mark",
        "engine",
        "exposition",
        "initial",
        "node",
        "power_limit_w",
        "ready_at",
        "removed_at",
        "requested_at",
        "rid",
        "state",
        "stats",
    )

    def __init__(self, rid: int, requested_at: float, initial: bool = False) -> None:
        self.rid = rid
        self.state = "pending"
        self.requested_at = requested_at
        self.initial = initial  # ready at the start: warm before the run, so no cold start was measured
        self.bound_at: float | None = None
        self.ready_at: float | None = None
        self.removed_at: float | None = None
        self.node: str | None = None
        self.engine: ReplicaModel | None = None
        self.power_limit_w: float | None = None
        self.busy_mark = 0.0
        self.stats = IntervalStats()
        self.exposition = EngineExposition()

    @property
    def pod(self) -> str:
        """The name its engine pod would have."""
        return f"r{self.rid}"


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica's life in virtual seconds (None: the step never happened)."""

    replica_id: int
    requested_at: float
    bound_at: float | None  # GPUs held from here (cold start begins)
    ready_at: float | None
    removed_at: float | None
    node: str | None
    power_limit_w: float | None  # last per-GPU cap applied
    initial: bool = False  # ready at t = 0 (warm before the run): no cold start to measure


@dataclass(frozen=True)
class SimResult:
    """Everything a run produced: per-request outcomes, the replica timeline, cost and run statistics."""

    policy: str
    config: ClusterConfig
    duration_s: float  # end of the simulated span
    measure_from_s: float  # start of the measured span: earlier arrivals and GPU time are warm-up
    requests: dict[str, np.ndarray] | None  # arrival, prompt, output, first_token, finish, replica, status
    outcomes: OutcomeAccumulator  # every request folded: SLO counts, histograms, attainment per hour
    timeline: dict[str, np.ndarray]  # per decision tick; see ClusterSimulator._record
    replicas: list[ReplicaRecord]
    gpu_seconds: float
    energy_j: float
    preemptions: int
    replicas_started: int
    decisions: int
    wall_s: float  # real seconds the simulation took

    @property
    def gpu_hours(self) -> float:
        """GPU-hours held by replicas (binding to removal) within the measured span."""
        return self.gpu_seconds / 3600.0

    def _req(self) -> dict[str, np.ndarray]:
        if self.requests is None:
            raise ValueError("per-request arrays were not kept (bounded request log); use summary()")
        if self.measure_from_s > 0:
            keep = self.requests["arrival"] >= self.measure_from_s
            return {k: v[keep] for k, v in self.requests.items()}
        return self.requests

    @property
    def ok(self) -> np.ndarray:
        """Mask of requests that completed."""
        return self._req()["status"] == RequestLog.OK

    @property
    def ttft(self) -> np.ndarray:
        """Time to first token per request (NaN if none)."""
        r = self._req()
        return r["first_token"] - r["arrival"]

    @property
    def e2e(self) -> np.ndarray:
        """Arrival to last token per request (NaN if unfinished)."""
        r = self._req()
        return r["finish"] - r["arrival"]

    @property
    def itl(self) -> np.ndarray:
        """Mean inter-token latency per request (NaN with fewer than two tokens)."""
        r = self._req()
        gen = r["output"] - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gen > 0, (r["finish"] - r["first_token"]) / np.maximum(gen, 1), np.nan)

    def summary(self, slo: SLO | None = None) -> LatencySummary:
        """Latency quantiles and SLO attainment of the measured requests: exact from the arrays when kept,
        else from the histograms (which only know the config's SLO)."""
        slo = slo or self.config.slo
        if self.requests is not None:
            return LatencySummary.from_arrays(self.ttft, self.itl, self.e2e, self.ok, slo)
        if slo != self.outcomes.slo:
            raise ValueError("per-request arrays were not kept, so only the configured SLO can be evaluated")
        return self.outcomes.summary()


ArrivalSource = Trace | Iterable[tuple[float, Trace]]


def _always(policy: ScalingPolicy) -> PolicyFactory:
    """A factory that hands out one given policy object, whatever the knobs."""

    def build(_knobs: ScalingKnobs) -> ScalingPolicy:
        return policy

    return build


def _chunks(source: ArrivalSource) -> Iterator[tuple[float, Trace]]:
    if isinstance(source, Trace):
        yield 0.0, source
    else:
        yield from source


@dataclass(frozen=True)
class SimTick:
    """What one decision tick saw and decided (for callers that follow a run, e.g. the parity test)."""

    now: float
    scrape: ScrapeResult  # the ready replicas' metrics pages, parsed
    step: LoopDecision  # the loop's decision, with the observation and bounds it used
    replicas: tuple[ReplicaRecord, ...]  # replicas not yet removed, before the decision is applied


class ClusterSimulator:
    """Runs one service and its scaling loop over a trace; see the module docstring.

    The loop builds the policy `config.knobs()` names through `factory` (the operator's, `crd_policies()`, by
    default); a `policy` object instead is used as it is (scripted policies in tests, calibration).
    Optional: `packing`/`power` policies (seams.py), `engine_factory` (a ReplicaModel class taking
    FastReplica's arguments), `log_capacity` (bounded request log for multi-day runs; summaries only),
    `on_tick` (called with every `SimTick`).
    """

    def __init__(
        self,
        config: ClusterConfig,
        policy: ScalingPolicy | None = None,
        *,
        factory: PolicyFactory | None = None,
        policy_name: str | None = None,
        packing: PackingPolicy | None = None,
        power: PowerPolicy | None = None,
        engine_factory: Callable[..., ReplicaModel] | None = None,
        log_capacity: int | None = None,
        on_tick: Callable[[SimTick], None] | None = None,
    ) -> None:
        self.config = config
        if policy is None:
            self.loop = ScalingLoop(factory or crd_policies())
            self.knobs = config.knobs()
        else:
            self.loop = ScalingLoop(_always(policy))
            self.knobs = ScalingKnobs(config.policy, {}, config.bounds, config.slo)
        self.policy_name = policy_name or (type(policy).__name__ if policy is not None else config.policy)
        self.packing = packing
        self.power = power
        self.on_tick = on_tick
        self._engine_factory = engine_factory
        self._perf_by_cap: dict[float | None, PerfModel] = {}
        self._cost_by_cap: dict[float | None, StepCost] = {}
        self._cold_start = config.resolved_cold_start_s()
        self._gpus = config.tensor_parallel
        # A bounded log keeps memory flat over days; unbounded keeps every request for the result
        self.log = RequestLog(config.slo, capacity=log_capacity)
        self._metrics = ScrapeAggregator()
        # (time, sequence number, engine to wake or None, replica becoming ready or None, engine version)
        self._heap: list[tuple[float, int, ReplicaModel | None, _Replica | None, int]] = []
        self._seq = itertools.count()
        self._replicas: list[_Replica] = []  # every replica ever created, for the result
        self._alive: list[_Replica] = []  # not yet removed: what ticks iterate over
        self._routable: list[ReplicaModel] = []  # engines of ready, non-draining replicas, by id
        self._by_engine: dict[int, _Replica] = {}
        self._gateway: deque[int] = deque()
        self._desired = config.initial_replicas
        self._energy_j = 0.0
        self._measure_from = 0.0
        self._decisions = 0
        self._timeline: dict[str, list[float]] = {
            k: []
            for k in (
                "t",
                "desired",
                "pending",
                "starting",
                "ready",
                "draining",
                "demand_rps",
                "observed_rps",
                "waiting",
                "running",
                "kv_usage",
                "ttft_p95_s",
                "itl_p95_s",
            )
        }

    @property
    def policy(self) -> ScalingPolicy:
        """The policy the loop runs."""
        return self.loop.policy

    # --- perf and engines ------------------------------------------------------------------------------

    def _perf(self, cap: float | None) -> PerfModel:
        perf = self._perf_by_cap.get(cap)
        if perf is None:
            perf = self.config.perf(cap)
            self._perf_by_cap[cap] = perf
        return perf

    def _cost(self, cap: float | None) -> StepCost:
        cost = self._cost_by_cap.get(cap)
        if cost is None:
            cost = CachedStepCost(self._perf(cap))
            self._cost_by_cap[cap] = cost
        return cost

    def _schedule(self, engine: ReplicaModel, t: float) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), engine, None, engine.version))

    def _new_engine(self, rid: int, cap: float | None, stats: IntervalStats) -> ReplicaModel:
        cfg = self.config
        factory = self._engine_factory
        if factory is None:
            factory = SteppedReplica if cfg.engine == "stepped" else FastReplica
        return factory(
            rid,
            self._cost(cap),
            self.log,
            stats,
            self._schedule,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            max_num_seqs=cfg.max_num_seqs,
        )

    # --- lifecycle -------------------------------------------------------------------------------------

    def _live(self) -> list[_Replica]:
        return [r for r in self._alive if r.state in ("pending", "starting", "ready")]

    def _try_bind(self, rep: _Replica, now: float) -> None:
        if self.packing is not None:
            node = self.packing.bind(
                ReplicaRequest(rep.rid, self.config.service, self._gpus, self.config.gpu, rep.requested_at), now
            )
            if node is None:
                return
            rep.node = node
        rep.state = "starting"
        rep.bound_at = now
        heapq.heappush(self._heap, (now + self._cold_start, next(self._seq), None, rep, 0))

    def _add_replica(self, now: float, ready: bool = False) -> None:
        rep = _Replica(len(self._replicas), now, initial=ready)
        self._replicas.append(rep)
        self._alive.append(rep)
        if ready:
            rep.state = "starting"
            rep.bound_at = now
            self._make_ready(rep, now)
        else:
            self._try_bind(rep, now)

    def _make_ready(self, rep: _Replica, now: float) -> None:
        rep.state = "ready"
        rep.ready_at = now
        engine = self._new_engine(rep.rid, rep.power_limit_w, rep.stats)
        rep.engine = engine
        self._by_engine[id(engine)] = rep
        self._routable.append(engine)
        self._routable.sort(key=attrgetter("rid"))
        self._flush_gateway(now)

    def _remove(self, rep: _Replica, now: float) -> None:
        prev = rep.state
        rep.state = "gone"
        rep.removed_at = now
        self._alive.remove(rep)
        if self.packing is not None and prev != "pending":
            self.packing.release(rep.rid, now)

    def _drain(self, rep: _Replica, now: float) -> None:
        engine = rep.engine
        assert engine is not None
        rep.state = "draining"
        self._routable.remove(engine)
        if engine.outstanding == 0:
            self._remove(rep, now)
        else:
            engine.on_finish = self._on_drain_finish

    def _on_drain_finish(self, engine: ReplicaModel, req: int, now: float) -> None:
        if engine.outstanding == 0:
            rep = self._by_engine[id(engine)]
            if rep.state == "draining":
                self._remove(rep, now)

    def _scale_to(self, n: int, now: float) -> None:
        live = self._live()
        if n > len(live):
            for _ in range(n - len(live)):
                self._add_replica(now)
            return
        surplus = len(live) - n
        # Order of removal: (1) unbound, (2) still starting, (3) ready with fewest outstanding; newest first
        rank = {"pending": 0, "starting": 1, "ready": 2}
        victims = sorted(
            live,
            key=lambda r: (
                rank[r.state],
                r.engine.outstanding if r.engine is not None else 0,
                -r.rid,
            ),
        )[:surplus]
        for rep in victims:
            if rep.state == "ready":
                self._drain(rep, now)
            else:
                self._remove(rep, now)

    # --- requests --------------------------------------------------------------------------------------

    def _fail(self, req: int, now: float) -> None:
        self.log.status[req] = RequestLog.FAILED
        self.log.finish[req] = now

    def _flush_gateway(self, now: float) -> None:
        q = self._gateway
        timeout = self.config.gateway_timeout_s
        arrival = self.log.arrival
        while q and self._routable:
            req = q.popleft()
            if now - arrival[req] > timeout:
                self._fail(req, now)
                continue
            min(self._routable, key=attrgetter("outstanding")).submit(req, now)

    def _expire_gateway(self, now: float) -> None:
        q = self._gateway
        timeout = self.config.gateway_timeout_s
        arrival = self.log.arrival
        while q and now - arrival[q[0]] > timeout:
            self._fail(q.popleft(), now)

    # --- ticks -----------------------------------------------------------------------------------------

    def _engines(self) -> list[ReplicaModel]:
        return [r.engine for r in self._alive if r.engine is not None and r.state in ("ready", "draining")]

    def _scrape(self, now: float) -> ScrapeResult:
        """Every ready replica's metrics page at `now`, as the operator scrapes the pods it routes to."""
        samples = {}
        for r in self._alive:
            if r.engine is None:
                continue
            r.exposition.fold(r.stats)
            if r.state == "ready":
                samples[r.pod] = r.exposition.sample(r.pod, now, r.engine)
        return ScrapeResult(now, samples)

    def _measured_cold_start(self) -> float | None:
        """Mean creation-to-ready time of the replicas serving now (the operator's, from its pods)."""
        samples = [
            r.ready_at - r.requested_at
            for r in self._alive
            if not r.initial and r.ready_at is not None and r.state in ("ready", "draining")
        ]
        return sum(samples) / len(samples) if samples else None

    def _record(self, obs: ServiceObservation, demand_rps: float) -> None:
        counts = {"pending": 0, "starting": 0, "ready": 0, "draining": 0}
        for r in self._alive:
            if r.state in counts:
                counts[r.state] += 1
        tl = self._timeline
        tl["t"].append(obs.now)
        tl["desired"].append(self._desired)
        for k, v in counts.items():
            tl[k].append(v)
        tl["demand_rps"].append(demand_rps)
        tl["observed_rps"].append(obs.request_rate)
        tl["waiting"].append(obs.queue_length)
        tl["running"].append(obs.running)
        tl["kv_usage"].append(obs.kv_cache_usage)
        tl["ttft_p95_s"].append(math.nan if obs.ttft_p95_s is None else obs.ttft_p95_s)
        tl["itl_p95_s"].append(math.nan if obs.itl_p95_s is None else obs.itl_p95_s)

    def _account_energy(self, now: float, interval: float) -> list[ReplicaView]:
        views: list[ReplicaView] = []
        for r in self._alive:
            if r.state not in ("starting", "ready", "draining"):
                continue
            util = 0.0
            if r.engine is not None:
                util = min(1.0, (r.engine.busy_s - r.busy_mark) / interval)
                r.busy_mark = r.engine.busy_s
            if now > self._measure_from:
                self._energy_j += self._perf(r.power_limit_w).power_w(util) * self._gpus * interval
            views.append(ReplicaView(r.rid, self.config.service, r.node, self._gpus, r.state, util, r.power_limit_w))
        return views

    def _apply_power(self, now: float, views: list[ReplicaView]) -> None:
        if self.power is None:
            return
        by_id = {r.rid: r for r in self._alive}
        for rid, cap in self.power.caps(now, views).items():
            rep = by_id.get(rid)
            if rep is None or rep.state == "gone":
                continue
            rep.power_limit_w = cap
            if rep.engine is not None:
                rep.engine.set_cost(self._cost(cap))

    # --- main loop -------------------------------------------------------------------------------------

    def run(self, arrivals: ArrivalSource, end_s: float, *, measure_from_s: float = 0.0) -> SimResult:
        """Simulate [0, end_s) of arrivals (a Trace, or (offset, Trace) chunks in time order); requests,
        GPU time and energy before measure_from_s are a warm-up and left out of the results."""
        if not 0 <= measure_from_s < end_s:
            raise ValueError("measure_from_s must lie in [0, end_s)")
        wall0 = time.perf_counter()
        cfg = self.config
        self._measure_from = measure_from_s
        self.log.accumulator.measure_from_s = measure_from_s
        interval = cfg.bounds.decision_interval_s
        for _ in range(cfg.initial_replicas):
            self._add_replica(0.0, ready=True)
        self._desired = cfg.initial_replicas
        heap = self._heap
        log = self.log
        routable = self._routable
        gateway = self._gateway
        by_outstanding = attrgetter("outstanding")
        next_tick = interval
        arrived_in_interval = 0
        chunk_iter = _chunks(arrivals)
        ring = log.capacity
        times: list[float] = []
        base = 0
        i = 0
        stop = end_s + cfg.drain_tail_s
        while True:
            if i >= len(times):
                nxt = next(chunk_iter, None)
                if nxt is not None:
                    offset, tr = nxt
                    keep = tr.arrival_s + offset < end_s
                    abs_t = tr.arrival_s[keep] + offset
                    base = log.extend(abs_t, tr.prompt_tokens[keep], tr.output_tokens[keep])
                    times = abs_t.tolist()
                    i = 0
                    continue
                t_arr = _INF
            else:
                t_arr = times[i]
            t_ev = heap[0][0] if heap else _INF
            if next_tick <= end_s and next_tick <= t_arr and next_tick <= t_ev:
                now = next_tick
                for e in self._engines():
                    e.sync(now)
                self._expire_gateway(now)
                scrape = self._scrape(now)
                ready = sum(1 for r in self._alive if r.state == "ready")
                obs = self._metrics.observe(cfg.service, scrape, replicas=self._desired, ready_replicas=ready)
                views = self._account_energy(now, interval)
                self._apply_power(now, views)
                for rep in list(self._alive):
                    if rep.state == "pending":
                        self._try_bind(rep, now)
                step = self.loop.tick(now, self.knobs, obs, self._measured_cold_start())
                if self.on_tick is not None:
                    self.on_tick(SimTick(now, scrape, step, tuple(self._record_of(r) for r in self._alive)))
                self._decisions += 1
                self._desired = step.decision.replicas
                self._scale_to(self._desired, now)
                self._record(step.observation, arrived_in_interval / interval)
                arrived_in_interval = 0
                next_tick += interval
                continue
            if t_ev <= t_arr:
                if t_ev == _INF or t_ev > stop:
                    break
                t, _, engine, booting, version = heapq.heappop(heap)
                if engine is not None:
                    if engine.version == version:  # an older wake-up was superseded by a re-plan
                        engine.wake(t)
                elif booting is not None and booting.state == "starting":  # a cancelled start stays cancelled
                    self._make_ready(booting, t)
                continue
            req = base + i if ring is None else (base + i) % ring
            i += 1
            arrived_in_interval += 1
            if routable:
                min(routable, key=by_outstanding).submit(req, t_arr)
            else:
                gateway.append(req)
        self._finish(end_s)
        return self._result(end_s, time.perf_counter() - wall0)

    @staticmethod
    def _record_of(r: _Replica) -> ReplicaRecord:
        return ReplicaRecord(
            r.rid, r.requested_at, r.bound_at, r.ready_at, r.removed_at, r.node, r.power_limit_w, r.initial
        )

    def _finish(self, end_s: float) -> None:
        """Requests still queued or in flight when the tail ran out count as failed; fold all records."""
        self.log.finalize()

    def _result(self, end_s: float, wall_s: float) -> SimResult:
        gpu_s = 0.0
        start = self._measure_from
        for r in self._replicas:
            if r.bound_at is None or r.bound_at >= end_s:
                continue
            until = end_s if r.removed_at is None else min(r.removed_at, end_s)
            gpu_s += max(0.0, until - max(r.bound_at, start)) * self._gpus
        return SimResult(
            policy=self.policy_name,
            config=self.config,
            duration_s=end_s,
            measure_from_s=start,
            requests=self.log.arrays(),
            outcomes=self.log.accumulator,
            timeline={k: np.asarray(v, dtype=float) for k, v in self._timeline.items()},
            replicas=[self._record_of(r) for r in self._replicas],
            gpu_seconds=gpu_s,
            energy_j=self._energy_j,
            preemptions=self.log.preemptions,
            replicas_started=len(self._replicas),
            decisions=self._decisions,
            wall_s=wall_s,
        )
