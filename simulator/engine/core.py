"""The real-time simulated engine: BatchScheduler iterations on a virtual timeline, tokens pushed to queues.

Iterations run back to back on the engine's own virtual timeline: an iteration starts when the previous
one ended (or when the first request became ready, after idling), lasts what the performance model says,
and its tokens are stamped with its end time. The loop sleeps until the clock reaches that end before
handing tokens out, so streams pace like a real engine while every reported latency stays exact even when
the event loop is late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from prometheus_client import CollectorRegistry

from catalogue.elastic import DEFAULT_ELASTIC, expert_bytes, resize_timings
from catalogue.perf import PerfModel
from packer.experts import ExpertLayout, contiguous_layout, eplb_layout, starting_layout
from simulator.batching import BatchScheduler, RequestId, SimRequest, StepResult
from simulator.engine.clock import Clock, ScaledClock
from simulator.engine.config import EngineConfig
from simulator.engine.metrics import EngineMetrics
from simulator.engine.text import TokenText
from simulator.experts import expert_popularity, route_tokens

log = logging.getLogger(__name__)

# Utilisation (and so power draw) is averaged over this much virtual time, like a DCGM sampling window.
_POWER_WINDOW_S = 1.0


class EngineDraining(Exception):
    """The engine is shutting down gracefully and admits no new requests."""


class EngineDead(Exception):
    """The engine core has died (vLLM's EngineDeadError): unrecoverable; /health answers 503, requests 500."""

    def __init__(self) -> None:
        super().__init__("EngineCore encountered an issue. See stack trace (above) for the root cause.")  # vLLM's


class ElasticScaleRejected(ValueError):
    """A resize the engine refuses before anything moves (vLLM answers 400)."""


class ElasticScaleFailed(RuntimeError):
    """A resize that cannot run at all, e.g. elastic EP not enabled (vLLM answers 500 "Scale failed")."""


class ElasticScaleBusy(RuntimeError):
    """SGLang only: a scale-up is still pending (409)."""


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one sequence, or its end."""

    index: int  # the sequence's choice index within its request
    text: str
    time_s: float  # virtual time the token was produced
    finish_reason: str | None  # set on the sequence's last token


@dataclass(frozen=True)
class SequenceSpec:
    """What a request asks of one generated sequence."""

    prompt_tokens: int
    max_tokens: int
    finish_reason: str  # reported when max_tokens is reached: "length", or "stop" for a natural end
    seed: int
    index: int = 0


@dataclass
class _Sequence:
    rid: str
    spec: SequenceSpec
    text: TokenText
    sink: asyncio.Queue[TokenEvent]
    arrival_s: float
    rank: int = 0  # the data-parallel rank serving it (requests are spread round-robin)
    scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    generated: int = 0
    done: bool = False


@dataclass
class _Elastic:
    """The instance's data-parallel width and expert placement, and whether a resize is in its 503 window."""

    width: int
    slots_per_rank: int
    layout: ExpertLayout
    scaling: bool = False  # vLLM: every HTTP request gets 503; SGLang: a scale-up is pending
    pending_width: int | None = None
    phase: str = "idle"  # SGLang's scale_phase
    last_error: str | None = None
    resizes: int = 0
    paused_until_s: float = 0.0  # the scheduler runs no iteration before this (vLLM's "keep" pause)


class SimEngine:
    """One simulated vLLM engine core: scheduler, metrics, shutdown state, power limit and expert layout."""

    def __init__(self, cfg: EngineConfig, clock: Clock | None = None, registry: CollectorRegistry | None = None):
        self.cfg = cfg
        self.lora: dict[str, str] = dict(cfg.lora_modules)  # adapter name -> path, as loaded
        self.clock: Clock = clock if clock is not None else ScaledClock(cfg.time_scale)
        self.perf = cfg.perf_model()
        self.scheduler = BatchScheduler(self.perf, cfg.max_num_batched_tokens, cfg.max_num_seqs, role=cfg.role)
        self.metrics = EngineMetrics(cfg.served_model_name, cfg.max_model_len, registry, cfg.metric_names)
        self.draining = False
        self.dead = False
        self._inflight = 0
        self._seqs: dict[RequestId, _Sequence] = {}
        self._next_id = 0
        self._cursor = 0.0
        self._wake: asyncio.Event | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._fault: asyncio.Task[None] | None = None
        self._activity: deque[tuple[float, float, float]] = deque()
        self.elastic = self._initial_elastic()
        self._scale_lock = asyncio.Lock()
        self._share = (
            expert_popularity(cfg.model.experts, cfg.expert_load_skew, cfg.seed)
            if cfg.model.architecture == "moe"
            else None
        )
        self._routing_rng = np.random.default_rng(cfg.seed)
        self._sglang_task: asyncio.Task[None] | None = None

    # lifecycle

    async def start(self) -> None:
        """Start the iteration loop on the running event loop."""
        self._wake = asyncio.Event()
        self._cursor = self.clock.now()
        self._task = asyncio.create_task(self._run(), name=f"sim-engine-{self.cfg.served_model_name}")
        if self.cfg.fail_after_s is not None:
            self._fault = asyncio.create_task(self._fail_at(self._cursor + self.cfg.fail_after_s))

    async def _fail_at(self, t: float) -> None:
        await self.clock.sleep_until(t)
        await self.die()

    async def die(self) -> None:
        """The engine core process dies (an injected fault): every unfinished sequence ends as aborted, new
        requests are refused with EngineDead, and /health turns 503. The API server keeps answering, as vLLM's
        does with VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1 (without it, vLLM's watchdog exits the process within 5 s)."""
        self.dead = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for seq in list(self._seqs.values()):
            self._finish(seq, "abort", self.clock.now())

    async def stop(self) -> None:
        """Stop the loop and end every unfinished sequence as aborted."""
        if self._fault is not None:
            self._fault.cancel()
        if self._sglang_task is not None:
            self._sglang_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sglang_task
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for seq in list(self._seqs.values()):
            self._finish(seq, "abort", self.clock.now())

    # requests

    @contextlib.contextmanager
    def request_slot(self) -> Iterator[None]:
        """Count an HTTP request as in flight for its whole life; refuses new ones while draining."""
        if self.dead:
            raise EngineDead()
        if self.draining:
            raise EngineDraining("cannot schedule new futures after shutdown")  # vLLM 0.32.0's words
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def submit(self, specs: Sequence[SequenceSpec]) -> tuple[list[str], asyncio.Queue[TokenEvent]]:
        """Queue sequences arriving now; their tokens arrive on the returned queue."""
        now = self.clock.now()
        sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
        rids = []
        for spec in specs:
            rid = f"seq-{self._next_id}"
            self._next_id += 1
            self.scheduler.add(SimRequest(rid, spec.prompt_tokens, spec.max_tokens, now))
            width = self.elastic.width if self.elastic is not None else 1
            self._seqs[rid] = _Sequence(rid, spec, TokenText(spec.seed), sink, now, rank=self._next_id % width)
            rids.append(rid)
        if self._wake is not None:
            self._wake.set()
        return rids, sink

    def abort(self, rids: Sequence[str]) -> None:
        """Stop generating the given sequences (e.g. the client went away) and free their KV cache."""
        now = self.clock.now()
        for rid in rids:
            seq = self._seqs.get(rid)
            if seq is not None and not seq.done:
                self.scheduler.abort(rid)
                self._finish(seq, "abort", now)

    @property
    def inflight(self) -> int:
        """HTTP requests accepted and not yet fully answered."""
        return self._inflight

    def refuse_new_requests(self) -> None:
        """The start of a graceful shutdown: new requests are refused; in-flight ones run to completion."""
        self.draining = True

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()

    # the loop

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if self.elastic is not None and self.clock.now() < self.elastic.paused_until_s:
                await self.clock.sleep_until(self.elastic.paused_until_s)
                self._cursor = max(self._cursor, self.elastic.paused_until_s)
                continue
            if not self.scheduler.has_work():
                self._wake.clear()
                await self._wake.wait()
                continue
            start = self._cursor
            if self.scheduler.num_running == 0:
                ready = self.scheduler.next_ready_s()
                if ready is not None and ready > start:
                    start = ready
                    await self.clock.sleep_until(start)
            result = self.scheduler.step(start)
            if result.duration_s == 0 and not result.preempted:
                # Nothing schedulable yet (e.g. KV still in transfer): let time pass.
                await self.clock.sleep_until(max(start, self.clock.now()) + 1e-3)
                continue
            end = start + result.duration_s
            await self.clock.sleep_until(end)
            self._cursor = end
            self._record(start, end, result)

    def _record(self, start: float, end: float, result: StepResult) -> None:
        m = self.metrics
        m.prompt_tokens.inc(result.prefill_tokens)
        m.generation_tokens.inc(len(result.tokens))
        m.iteration_tokens.observe(result.prefill_tokens + result.decode_seqs)
        if result.preempted:
            m.preemptions.inc(len(result.preempted))
        self._activity.append((start, end, result.activity))
        while self._activity and self._activity[0][1] < end - 10 * _POWER_WINDOW_S:
            self._activity.popleft()
        for rid in result.admitted:
            seq = self._seqs.get(rid)
            if seq is not None:
                seq.scheduled_s = start
                m.queue_time.observe(start - seq.arrival_s)
        finished = set(result.finished)
        for rid in result.tokens:
            seq = self._seqs.get(rid)
            if seq is None:
                continue
            if seq.last_token_s is None:
                seq.first_token_s = end
                m.ttft.observe(end - seq.arrival_s)
            else:
                m.itl.observe(end - seq.last_token_s)
            seq.last_token_s = end
            seq.generated += 1
            reason = seq.spec.finish_reason if rid in finished else None
            seq.sink.put_nowait(TokenEvent(seq.spec.index, seq.text.next(), end, reason))
            if reason is not None:
                self._finish(seq, reason, end)
        m.set_scheduler_state(self.scheduler.num_running, self.scheduler.num_waiting, self.scheduler.kv_usage)

    def _finish(self, seq: _Sequence, reason: str, now: float) -> None:
        seq.done = True
        self._seqs.pop(seq.rid, None)
        m = self.metrics
        m.success[reason].inc()
        m.e2e.observe(now - seq.arrival_s)
        m.request_prompt_tokens.observe(seq.spec.prompt_tokens)
        m.request_generation_tokens.observe(seq.generated)
        m.request_max_tokens.observe(seq.spec.max_tokens)
        if seq.scheduled_s is not None:
            m.inference_time.observe(now - seq.scheduled_s)
            if seq.first_token_s is not None:
                m.prefill_time.observe(seq.first_token_s - seq.scheduled_s)
                m.decode_time.observe(now - seq.first_token_s)
        if seq.first_token_s is not None and seq.generated > 1:
            m.request_tpot.observe((now - seq.first_token_s) / (seq.generated - 1))
        if reason == "abort":
            seq.sink.put_nowait(TokenEvent(seq.spec.index, "", now, "abort"))
        m.set_scheduler_state(self.scheduler.num_running, self.scheduler.num_waiting, self.scheduler.kv_usage)

    # power

    def utilization(self) -> float:
        """Power activity averaged over the last second of virtual time, 0..1."""
        now = self.clock.now()
        lo = now - _POWER_WINDOW_S
        busy = sum(a * max(0.0, min(e, now) - max(s, lo)) for s, e, a in self._activity)
        return min(1.0, busy / _POWER_WINDOW_S)

    def power_state(self) -> dict[str, object]:
        """The per-GPU power limit, its valid range and the current draw."""
        gpu = self.perf.gpu
        return {
            "gpu": gpu.product,
            "gpus": self.perf.num_gpus,
            "limit_w": self.perf.power_limit_w if self.perf.power_limit_w is not None else gpu.tdp_w,
            "default_limit_w": gpu.tdp_w,
            "min_limit_w": gpu.min_power_limit_w,
            "max_limit_w": gpu.tdp_w,
            "draw_w": round(self.perf.power_w(self.utilization()), 3),
        }

    def set_power_limit(self, watts: float | None) -> dict[str, object]:
        """Apply a per-GPU power limit (None restores TDP); raises PowerLimitError when out of range."""
        self.perf = self.perf.with_power_limit(watts)
        self.scheduler.perf = self.perf
        return self.power_state()

    # elastic expert parallelism

    def _initial_elastic(self) -> _Elastic | None:
        model, width = self.cfg.model, self.cfg.expert_parallel
        if model.architecture != "moe" or model.experts % width:
            return None
        return _Elastic(width, model.experts // width, contiguous_layout(model.experts, width))

    @property
    def scaling(self) -> bool:
        """vLLM's flag: a resize is committing and every HTTP request is answered 503."""
        return self.elastic is not None and self.elastic.scaling and not self.cfg.speaks_sglang

    def expert_share(self) -> list[float]:
        """Each expert's share of routed tokens (the simulated router's popularity); empty for a dense model."""
        return [] if self._share is None else [float(x) for x in self._share]

    def routed_experts(self, tokens: int) -> np.ndarray | None:
        """Expert ids per token, MoE layer and top-k slot, as vLLM returns with --enable-return-routed-experts."""
        if self._share is None:
            return None
        m = self.cfg.model
        return route_tokens(self._share, tokens, m.layers, m.experts_per_token, self._routing_rng)

    async def scale_elastic_ep(self, new_width: int, drain_timeout_s: int) -> None:
        """vLLM's resize: prepare while serving, then a commit window in which every request gets 503.

        Raises ElasticScaleRejected (400), TimeoutError (408) when VLLM_ELASTIC_EP_DRAIN_REQUESTS is set and
        requests do not drain within drain_timeout_s, ElasticScaleFailed (500). Concurrent calls run one after
        another, as vLLM serialises them."""
        async with self._scale_lock:
            ex = self.elastic
            if new_width == (ex.width if ex is not None else self.cfg.expert_parallel):
                return
            if ex is None or not self.cfg.enable_elastic_ep:
                raise ElasticScaleFailed("elastic EP is not enabled on this engine")
            limit = self.cfg.elastic_ep_max_dp_size or self.cfg.expert_parallel
            if new_width > limit:
                raise ElasticScaleRejected(
                    f"Cannot scale to data_parallel_size {new_width}; --elastic-ep-max-dp-size is {limit}."
                )
            experts = self.cfg.model.experts
            if new_width * ex.slots_per_rank < experts:
                minimum = -(-experts // ex.slots_per_rank)
                raise ElasticScaleRejected(f"Cannot scale to data_parallel_size {new_width}, minimum is {minimum}")
            await self._resize(ex, new_width, drain_timeout_s)

    async def _resize(self, ex: _Elastic, new_width: int, drain_timeout_s: int) -> None:
        old = ex.width
        share = self.expert_share()
        target = eplb_layout(share, new_width, ex.slots_per_rank)
        start = starting_layout(ex.layout, new_width)
        per_expert = expert_bytes(self.cfg.model)
        received = max(len(target.ranks[r]) - len(set(target.ranks[r]) & set(start.ranks[r])) for r in range(new_width))
        timings = resize_timings(
            self.cfg.model,
            old,
            new_width,
            ex.slots_per_rank,
            tensor_parallel=self.cfg.tensor_parallel,
            moved_expert_bytes_per_rank=received * per_expert,
            cal=replace(DEFAULT_ELASTIC, peer_gbps=self.cfg.expert_load_gbps),
        )
        await self.clock.sleep_until(self.clock.now() + timings.prepare_s)
        ex.scaling = True
        try:
            if self.cfg.drain_before_scale:
                await self._drain(drain_timeout_s)
            now = self.clock.now()
            if new_width < old:
                # The retiring ranks' engines pause with "abort": their running requests end at once.
                self.abort([seq.rid for seq in self._seqs.values() if seq.rank >= new_width])
            ex.paused_until_s = now + timings.commit_s
            await self.clock.sleep_until(ex.paused_until_s)
            self.perf = PerfModel(
                self.cfg.model,
                self.perf.gpu,
                self.cfg.tensor_parallel,
                self.perf.power_limit_w,
                self.cfg.calibration,
                self.cfg.gpu_memory_utilization,
                pipeline_parallel=self.cfg.pipeline_parallel,
                expert_parallel=new_width,
            )
            self.scheduler.resize_kv(self.perf)
            # Scale-down rebalances inside the commit; scale-up's rebalance runs asynchronously right after.
            ex.layout = target
            ex.width = new_width
            ex.resizes += 1
            self.metrics.set_scheduler_state(
                self.scheduler.num_running, self.scheduler.num_waiting, self.scheduler.kv_usage
            )
        finally:
            ex.scaling = False
            if self._wake is not None:
                self._wake.set()

    async def _drain(self, timeout_s: int) -> None:
        # vLLM polls once a second until its engines are idle, then gives up after drain_timeout.
        deadline = self.clock.now() + timeout_s
        while self._inflight > 0:
            if self.clock.now() >= deadline:
                raise TimeoutError(f"requests did not drain within {timeout_s} s")
            await self.clock.sleep_until(min(deadline, self.clock.now() + 1.0))

    # SGLang's variant: scale-up only, answered at once, the joining cohort completes it in the background.

    def sglang_scale(self, new_width: int) -> dict[str, object]:
        """Start a scale-up as SGLang's /scale_elastic_ep does; the resize finishes in the background."""
        ex = self.elastic
        if ex is None or not self.cfg.enable_elastic_ep:
            raise ElasticScaleFailed("elastic EP is not enabled (--elastic-ep-backend)")
        old = ex.width
        if ex.pending_width is not None:
            raise ElasticScaleBusy("a previous scale operation has not completed yet")
        if new_width <= old:
            raise ElasticScaleRejected(f"new_ep_size ({new_width}) must be greater than current ({old})")
        limit = self.cfg.elastic_ep_max_dp_size or self.cfg.expert_parallel
        if new_width > limit:
            raise ElasticScaleRejected(f"new_ep_size ({new_width}) exceeds the maximum EP size ({limit})")
        ex.pending_width = new_width
        ex.phase = "waiting_for_cohort"
        self._sglang_task = asyncio.create_task(self._sglang_resize(ex, new_width))
        return {"message": f"Scaling initiated from {old} to {new_width}", "old_ep_size": old, "new_ep_size": new_width}

    async def _sglang_resize(self, ex: _Elastic, new_width: int) -> None:
        try:
            ex.phase = "pending"
            await self._resize(ex, new_width, 0)
            ex.phase = "serving_expanded"
            ex.last_error = None
        except Exception as exc:  # the scale state reports it; nothing awaits this task
            ex.phase = "failed"
            ex.last_error = str(exc)
        finally:
            ex.pending_width = None

    def sglang_state(self) -> dict[str, object]:
        """SGLang's GET /is_scaling_elastic_ep body."""
        ex = self.elastic
        assert ex is not None
        return {
            "is_scaling_elastic_ep": ex.pending_width is not None,
            "effective_ep_size": ex.width,
            "pending_ep_size": ex.pending_width,
            "scale_phase": ex.phase,
            "last_error": ex.last_error,
        }
