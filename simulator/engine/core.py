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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from simulator.batching import BatchScheduler, RequestId, SimRequest, StepResult
from simulator.engine.clock import Clock, ScaledClock
from simulator.engine.config import EngineConfig
from simulator.engine.metrics import EngineMetrics
from simulator.engine.text import TokenText

log = logging.getLogger(__name__)

# Utilisation (and so power draw) is averaged over this much virtual time, like a DCGM sampling window.
_POWER_WINDOW_S = 1.0


class EngineDraining(Exception):
    """The engine is shutting down gracefully and admits no new requests."""


class ExpertLayoutError(ValueError):
    """An expert layout that does not place every expert or names unknown experts."""


class ExpertLayoutBusy(Exception):
    """A layout change is already loading."""


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
    scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    generated: int = 0
    done: bool = False


@dataclass
class _PendingLayout:
    layout: dict[int, list[int]]
    ready_at_s: float
    load_seconds: float
    bytes_moved: float
    experts_moved: int


@dataclass
class _Experts:
    layout: dict[int, list[int]]
    version: int = 0
    pending: _PendingLayout | None = None


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
        self._inflight = 0
        self._seqs: dict[RequestId, _Sequence] = {}
        self._next_id = 0
        self._cursor = 0.0
        self._wake: asyncio.Event | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._activity: deque[tuple[float, float, float]] = deque()
        self._experts = _Experts(self._initial_layout()) if cfg.model.architecture == "moe" else None

    # lifecycle

    async def start(self) -> None:
        """Start the iteration loop on the running event loop."""
        self._wake = asyncio.Event()
        self._cursor = self.clock.now()
        self._task = asyncio.create_task(self._run(), name=f"sim-engine-{self.cfg.served_model_name}")

    async def stop(self) -> None:
        """Stop the loop and end every unfinished sequence as aborted."""
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
            self._seqs[rid] = _Sequence(rid, spec, TokenText(spec.seed), sink, now)
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
            self._apply_layout(self.clock.now())
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

    # experts

    def _initial_layout(self) -> dict[int, list[int]]:
        experts, ranks = self.cfg.model.experts, self.cfg.expert_parallel
        return {r: list(range(r * experts // ranks, (r + 1) * experts // ranks)) for r in range(ranks)}

    def _apply_layout(self, now: float) -> None:
        ex = self._experts
        if ex is not None and ex.pending is not None and now >= ex.pending.ready_at_s:
            ex.layout = ex.pending.layout
            ex.version += 1
            ex.pending = None

    def experts_state(self) -> dict[str, object] | None:
        """{"layout", "pending", "version"} for a MoE model, None for a dense one."""
        if self._experts is None:
            return None
        now = self.clock.now()
        self._apply_layout(now)
        ex = self._experts
        pending: dict[str, object] | None = None
        if ex.pending is not None:
            p = ex.pending
            pending = {
                "layout": {str(r): e for r, e in sorted(p.layout.items())},
                "load_seconds": round(p.load_seconds, 6),
                "remaining_seconds": round(max(0.0, p.ready_at_s - now), 6),
                "experts_moved": p.experts_moved,
                "bytes_moved": p.bytes_moved,
            }
        return {
            "layout": {str(r): e for r, e in sorted(ex.layout.items())},
            "pending": pending,
            "version": ex.version,
            "experts": self.cfg.model.experts,
        }

    def request_layout(self, layout: Mapping[str, object]) -> dict[str, object]:
        """Start loading a new expert layout; serving continues on the current one until it is loaded."""
        if self._experts is None:
            raise ExpertLayoutError(f"{self.cfg.model.name} is a dense model; it has no experts")
        now = self.clock.now()
        self._apply_layout(now)
        if self._experts.pending is not None:
            raise ExpertLayoutBusy("a layout change is still loading; retry when `pending` is null")
        new = self._validate_layout(layout)
        current = self._experts.layout
        per_expert = self.cfg.model.expert_params_b * 1e9 * self.cfg.model.dtype_bytes
        moved = {r: len(set(e) - set(current.get(r, []))) for r, e in new.items()}
        # Ranks load in parallel; the slowest one sets when the switch can happen.
        load_s = max(moved.values(), default=0) * per_expert / (self.cfg.expert_load_gbps * 1e9)
        count = sum(moved.values())
        self._experts.pending = _PendingLayout(new, now + load_s, load_s, count * per_expert, count)
        if self._wake is not None:
            self._wake.set()
        state = self.experts_state()
        assert state is not None
        return state

    def _validate_layout(self, layout: Mapping[str, object]) -> dict[int, list[int]]:
        experts = self.cfg.model.experts
        if not layout:
            raise ExpertLayoutError("layout must map at least one rank to its experts")
        parsed: dict[int, list[int]] = {}
        for key, ids in layout.items():
            try:
                rank = int(key)
            except ValueError:
                raise ExpertLayoutError(f"layout rank {key!r} is not an integer") from None
            if rank < 0:
                raise ExpertLayoutError(f"layout rank {rank} is negative")
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise ExpertLayoutError(f"layout rank {rank}: experts must be a list of integers")
            bad = [i for i in ids if not 0 <= i < experts]
            if bad:
                raise ExpertLayoutError(f"layout rank {rank}: expert ids {bad} outside 0..{experts - 1}")
            parsed[rank] = sorted(set(ids))
        missing = sorted(set(range(experts)) - {i for ids in parsed.values() for i in ids})
        if missing:
            raise ExpertLayoutError(f"layout leaves experts {missing} on no rank")
        return parsed
