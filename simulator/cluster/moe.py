"""Widening a MoE service under a load step, three ways, in virtual time.

One expert-parallel instance serves a Poisson load that steps up; at the decision time the service gains capacity
in one of three ways, and the run records every request:

- `whole-replica`: a second instance of the same width cold-starts (its GPUs pull the image, read every weight
  from storage, initialise) while the first keeps serving alone.
- `cold-restart`: the instance is taken out of routing, finishes what it runs, and restarts at the larger width
  (a full cold start); arrivals wait at the gateway meanwhile and fail after `gateway_timeout_s`.
- `in-place`: Ebbtide's resize through vLLM's elastic EP. The joining ranks' pods start (image pull), then the
  engine prepares while it keeps serving (joiners initialise and receive their sender's shard peer to peer,
  `catalogue/elastic.py`); for the commit the router holds new requests at the gateway (the engine would answer
  503), the engine pauses what it runs (vLLM's "keep" pause of a scale-up) and resumes it at the new width, and
  the held requests go in. No request is aborted, so none fails unless it waits past the gateway timeout.

Engines are `FastReplica`s (replica.py) with the catalogue's performance model at each width; the expert bytes a
resize moves come from the packer's layout planner (`packer/experts.py`) on the simulated router's popularity.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np

from autoscaler.types import SLO
from catalogue.elastic import DEFAULT_ELASTIC, ElasticCalibration, expert_bytes, rank_weight_bytes, resize_timings
from catalogue.gpus import GPUProfile, lookup_gpu
from catalogue.models import ModelSpec, lookup_model
from catalogue.perf import PerfModel
from packer.experts import contiguous_layout, plan_layout
from simulator.cluster.records import RequestLog
from simulator.cluster.replica import CachedStepCost, FastReplica, IntervalStats, ReplicaModel, StepCost
from simulator.experts import expert_popularity
from simulator.loadgen.summary import meets_slo

Strategy = Literal["whole-replica", "cold-restart", "in-place"]
STRATEGIES: tuple[Strategy, ...] = ("whole-replica", "cold-restart", "in-place")


@dataclass(frozen=True)
class MoeScenario:
    """The service, its load step and the lifecycle constants every strategy shares."""

    model: str = "deepseek-v2-lite"
    gpu: str = "H100"
    start_width: int = 2  # data-parallel (expert-parallel) ranks, one GPU each
    target_width: int = 4
    base_rps: float = 8.0
    step_rps: float = 16.0
    step_at_s: float = 120.0
    decide_after_s: float = 15.0  # the autoscaler sees the step and decides this long after it
    duration_s: float = 420.0
    prompt_tokens: int = 512  # median of a log-normal
    output_tokens: int = 256
    seed: int = 0
    slo: SLO = field(default_factory=lambda: SLO(ttft_s=2.0, itl_s=0.1))
    gateway_timeout_s: float = 60.0
    image_pull_s: float = 60.0  # GPUs that have not run the engine image yet
    storage_gbps: float = 2.0  # weights read from storage at a cold start
    expert_skew: float = 1.0
    elastic: ElasticCalibration = DEFAULT_ELASTIC

    @property
    def decide_at_s(self) -> float:
        """When every strategy starts adding capacity."""
        return self.step_at_s + self.decide_after_s

    def resolve(self) -> tuple[ModelSpec, GPUProfile]:
        """The catalogue model and GPU, or ValueError naming the unknown one."""
        model, gpu = lookup_model(self.model), lookup_gpu(self.gpu)
        if model is None or model.architecture != "moe":
            raise ValueError(f"{self.model!r} is not a MoE model of the catalogue")
        if gpu is None:
            raise ValueError(f"unknown GPU {self.gpu!r}")
        return model, gpu


@dataclass
class StrategyResult:
    """What one strategy did to the service."""

    strategy: Strategy
    capacity_online_s: float  # from the decision to the added capacity serving
    throughput_tok_s: float  # output tokens per second generated in the change window
    slo_attainment: float  # of requests arriving in the change window (failed ones miss)
    failed: int  # requests of the whole run that failed
    requests: int
    peak_gpus: int
    peak_weight_gb: float  # weights resident over all GPUs at the peak
    timeline: list[tuple[float, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ExpertMovement:
    """Expert bytes the in-place resize moves, planned vs. the layout computed from scratch."""

    widen_planned_gb: float
    widen_scratch_gb: float
    narrow_planned_gb: float
    narrow_scratch_gb: float
    explanation: tuple[str, ...]


def cold_start_s(sc: MoeScenario, perf: PerfModel) -> float:
    """A fresh instance: image pull, every weight of its ranks from storage, engine initialisation."""
    return perf.cold_start_seconds(sc.image_pull_s, sc.storage_gbps)


class _Paused:
    """A step cost whose next phase first waits `pause_s`: the scheduler pause of a resize's commit."""

    def __init__(self, inner: StepCost, pause_s: float) -> None:
        self.inner = inner
        self.kv_capacity_tokens = inner.kv_capacity_tokens
        self._left = pause_s

    def _take(self) -> float:
        left, self._left = self._left, 0.0
        return left

    def step_seconds(
        self, prefill_tokens: int, decode_seqs: int, kv_tokens: int, prefill_pairs: float | None = None
    ) -> float:
        return self.inner.step_seconds(prefill_tokens, decode_seqs, kv_tokens, prefill_pairs) + self._take()

    def decode_mean(self, batch: int, kv_tokens: int, steps: int) -> float:
        return self.inner.decode_mean(batch, kv_tokens, steps) + self._take() / max(1, steps)


class _Run:
    """One strategy's discrete-event run."""

    def __init__(self, sc: MoeScenario, strategy: Strategy) -> None:
        self.sc = sc
        self.strategy = strategy
        self.model, self.gpu = sc.resolve()
        self.log = RequestLog(sc.slo)
        self.stats = IntervalStats()
        self._heap: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self.replicas: list[FastReplica] = []
        self.routable: set[int] = set()
        self.held: deque[int] = deque()
        self.gpus = 0
        self.peak_gpus = 0
        self.weight_bytes = 0.0
        self.peak_weight_bytes = 0.0
        self.capacity_at: float = math.nan
        self.timeline: list[tuple[float, str]] = []
        self._drained: Callable[[float], None] | None = None

    # plumbing

    def at(self, t: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), action))

    def _schedule(self, engine: ReplicaModel, t: float) -> None:
        version = engine.version
        self.at(t, lambda now: engine.wake(now) if engine.version == version else None)

    def perf(self, width: int) -> PerfModel:
        return PerfModel(self.model, self.gpu, 1, expert_parallel=width)

    def hold_gpus(self, gpus: int, weight_bytes: float) -> None:
        self.gpus += gpus
        self.weight_bytes += weight_bytes
        self.peak_gpus = max(self.peak_gpus, self.gpus)
        self.peak_weight_bytes = max(self.peak_weight_bytes, self.weight_bytes)

    def new_replica(self, width: int) -> FastReplica:
        replica = FastReplica(
            len(self.replicas), CachedStepCost(self.perf(width)), self.log, self.stats, self._schedule
        )
        replica.on_finish = self._on_finish
        self.replicas.append(replica)
        return replica

    def note(self, now: float, what: str) -> None:
        self.timeline.append((round(now - self.sc.decide_at_s, 3), what))

    # routing

    def route(self, req: int, now: float) -> None:
        if not self.routable:
            self.held.append(req)
            return
        target = min(self.routable, key=lambda r: (self.replicas[r].outstanding, r))
        self.replicas[target].submit(req, now)

    def release_held(self, now: float) -> None:
        while self.held:
            req = self.held.popleft()
            if now - self.log.arrival[req] > self.sc.gateway_timeout_s:
                self.log.status[req] = RequestLog.FAILED
                self.log.finish[req] = now
                continue
            self.route(req, now)

    def _on_finish(self, replica: ReplicaModel, req: int, now: float) -> None:
        if self._drained is not None and replica.outstanding == 0 and replica.rid not in self.routable:
            done, self._drained = self._drained, None
            done(now)

    def drain(self, replica: FastReplica, now: float, then: Callable[[float], None]) -> None:
        """Stop routing to `replica`; call `then` once it has finished everything it runs."""
        self.routable.discard(replica.rid)
        if replica.outstanding == 0:
            then(now)
        else:
            self._drained = then

    def fail_overdue(self, now: float) -> None:
        """Fail held requests that have waited past the gateway timeout (the gateway gives up on them)."""
        keep: deque[int] = deque()
        for req in self.held:
            if now - self.log.arrival[req] > self.sc.gateway_timeout_s:
                self.log.status[req] = RequestLog.FAILED
                self.log.finish[req] = now
            else:
                keep.append(req)
        self.held = keep

    # the run

    def run(self) -> StrategyResult:
        sc = self.sc
        first = self.new_replica(sc.start_width)
        self.routable.add(first.rid)
        self.hold_gpus(sc.start_width, sc.start_width * self._rank_bytes(sc.start_width))
        self._load()
        self.at(sc.decide_at_s, getattr(self, "_" + self.strategy.replace("-", "_")))
        t_gc = sc.decide_at_s
        while t_gc < sc.duration_s + sc.gateway_timeout_s:
            self.at(t_gc, self.fail_overdue)
            t_gc += 1.0
        end = sc.duration_s + 4 * sc.gateway_timeout_s
        while self._heap and self._heap[0][0] <= end:
            t, _, action = heapq.heappop(self._heap)
            action(t)
        self.log.finalize()
        return self._result()

    def _rank_bytes(self, width: int) -> float:
        # A cold start lays experts out evenly; an in-place resize keeps each rank's slot count (vLLM's rule).
        return rank_weight_bytes(self.model, self.model.experts // width)

    def _load(self) -> None:
        sc = self.sc
        rng = np.random.default_rng(sc.seed)
        arrivals: list[float] = []
        t = 0.0
        while True:
            rate = sc.base_rps if t < sc.step_at_s else sc.step_rps
            t += float(rng.exponential(1.0 / rate))
            if t >= sc.duration_s:
                break
            arrivals.append(t)
        n = len(arrivals)
        prompt = np.maximum(16, rng.lognormal(math.log(sc.prompt_tokens), 0.6, n)).astype(np.int64)
        output = np.maximum(2, rng.lognormal(math.log(sc.output_tokens), 0.6, n)).astype(np.int64)
        first = self.log.extend(np.array(arrivals), prompt, output)
        for i, arrival in enumerate(arrivals):
            self.at(arrival, partial(self._arrive, first + i))

    def _arrive(self, req: int, now: float) -> None:
        self.route(req, now)

    # strategies

    def _whole_replica(self, now: float) -> None:
        sc = self.sc
        width = sc.start_width
        perf = self.perf(width)
        self.hold_gpus(width, width * self._rank_bytes(width))
        self.note(now, f"new EP{width} replica: cold start")
        replica = self.new_replica(width)

        def ready(t: float) -> None:
            self.routable.add(replica.rid)
            self.capacity_at = t
            self.note(t, "new replica serves")

        self.at(now + cold_start_s(sc, perf), ready)

    def _cold_restart(self, now: float) -> None:
        sc = self.sc
        old = self.replicas[0]
        self.note(now, f"EP{sc.start_width} instance leaves routing and drains")

        def restart(t: float) -> None:
            self.note(t, f"drained; restarting at EP{sc.target_width}")
            self.weight_bytes = 0.0
            self.gpus = 0
            width = sc.target_width
            self.hold_gpus(width, width * self._rank_bytes(width))
            perf = self.perf(width)
            old.set_cost(CachedStepCost(perf))

            def ready(t2: float) -> None:
                self.routable.add(old.rid)
                self.capacity_at = t2
                self.note(t2, f"EP{width} instance serves")
                self.release_held(t2)

            self.at(t + cold_start_s(sc, perf), ready)

        self.drain(old, now, restart)

    def _in_place(self, now: float) -> None:
        sc = self.sc
        inst = self.replicas[0]
        slots = self.model.experts // sc.start_width
        joiners = sc.target_width - sc.start_width
        self.hold_gpus(joiners, joiners * rank_weight_bytes(self.model, slots))
        self.note(now, f"{joiners} joining rank pod(s) start")
        timings = resize_timings(self.model, sc.start_width, sc.target_width, slots, cal=sc.elastic)

        def prepare(t: float) -> None:
            self.note(t, "POST /scale_elastic_ep: prepare while serving")
            self.at(t + timings.prepare_s, commit)

        def commit(t: float) -> None:
            # The router holds new requests (the engine would answer 503); running ones pause ("keep") and resume.
            self.routable.discard(inst.rid)
            inst.set_cost(_Paused(inst.cost, timings.commit_s))
            self.note(t, f"commit: 503 window of {timings.commit_s:g} s, running requests paused")

            def done(t2: float) -> None:
                inst.set_cost(CachedStepCost(self.perf(sc.target_width)))
                self.routable.add(inst.rid)
                self.capacity_at = t2
                self.note(t2, f"EP{sc.target_width} serves")
                self.release_held(t2)

            self.at(t + timings.commit_s, done)

        self.at(now + sc.image_pull_s, prepare)

    # outcome

    def _result(self) -> StrategyResult:
        sc = self.sc
        a = self.log.arrays()
        assert a is not None
        online = self.capacity_at - sc.decide_at_s
        return StrategyResult(
            strategy=self.strategy,
            capacity_online_s=online,
            throughput_tok_s=math.nan,
            slo_attainment=math.nan,
            failed=int((a["status"] == RequestLog.FAILED).sum()),
            requests=len(a["status"]),
            peak_gpus=self.peak_gpus,
            peak_weight_gb=self.peak_weight_bytes / 1e9,
            timeline=self.timeline,
        )

    def window_figures(self, start: float, end: float) -> tuple[float, float]:
        """Output tokens per second generated in [start, end) and SLO attainment of requests arriving then."""
        a = self.log.arrays()
        assert a is not None
        ok = a["status"] == RequestLog.OK
        first, finish, out = a["first_token"], a["finish"], a["output"]
        # Tokens of each request spread evenly from its first token to its end; count the part inside the window.
        span = np.maximum(finish - first, 1e-9)
        inside = np.clip(np.minimum(finish, end) - np.maximum(first, start), 0.0, None) / span
        tokens = float(np.nansum(np.where(ok, out * inside, 0.0)))
        arrived = (a["arrival"] >= start) & (a["arrival"] < end)
        ttft = first - a["arrival"]
        with np.errstate(invalid="ignore", divide="ignore"):
            itl = np.where(out > 1, (finish - first) / np.maximum(out - 1, 1), np.nan)
        good = meets_slo(ttft, itl, ok, self.sc.slo)
        attainment = float(good[arrived].mean()) if arrived.any() else math.nan
        return tokens / (end - start), attainment


def expert_movement(sc: MoeScenario) -> ExpertMovement:
    """What the planner moves to widen and narrow back, against the EPLB layout computed from scratch."""
    model, _ = sc.resolve()
    load = list(expert_popularity(model.experts, sc.expert_skew, sc.seed) * 1e6)
    size = expert_bytes(model)
    start = contiguous_layout(model.experts, sc.start_width)
    widen = plan_layout(load, start, sc.target_width, size)
    narrow = plan_layout(load, widen.layout, sc.start_width, size)
    return ExpertMovement(
        widen.bytes_moved / 1e9,
        widen.scratch_bytes_moved / 1e9,
        narrow.bytes_moved / 1e9,
        narrow.scratch_bytes_moved / 1e9,
        widen.explanation + narrow.explanation,
    )


def run_moe(sc: MoeScenario) -> list[StrategyResult]:
    """Every strategy on the same load; throughput and attainment over one common change window."""
    runs = [_Run(sc, s) for s in STRATEGIES]
    results = [run.run() for run in runs]
    finite = [r.capacity_online_s for r in results if math.isfinite(r.capacity_online_s)]
    end = sc.decide_at_s + (max(finite) if finite else sc.duration_s - sc.decide_at_s)
    for run, result in zip(runs, results, strict=True):
        result.throughput_tok_s, result.slo_attainment = run.window_figures(sc.decide_at_s, end)
    return results
