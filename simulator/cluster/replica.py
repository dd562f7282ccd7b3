"""Engine models of one replica in virtual time: a closed-form continuous-batching model and a stepped one.

`FastReplica` follows vLLM's scheduler (chunked prefill, FCFS admission under `max_num_seqs` and the KV
budget, recompute preemption of the newest sequence when KV runs out) but plans in phases: an optional step
carrying prefill chunks, then a run of k decode steps with a constant batch, costed in one call (the step
time is affine in KV, so the mean of the first and last step is exact) and ended by the next sequence to
finish (an iteration number on a heap) or by KV running out. An arrival the engine could admit cuts the run
at its next step boundary, as the real scheduler would take it into the next step. `SteppedReplica`
(stepped.py) drives the engine's own `BatchScheduler` one step at a time; it is the reference the fast
model is validated against (tests/unit/simulator/test_cluster.py).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from catalogue.perf import PerfModel
from simulator.cluster.records import RequestLog


class StepCost(Protocol):
    """The part of the engine performance model a replica needs."""

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache the replica holds."""
        ...

    def step_seconds(
        self, prefill_tokens: int, decode_seqs: int, kv_tokens: int, prefill_pairs: float | None = None
    ) -> float:
        """Duration of one engine step; prefill_pairs are attended (query, key) pairs of the prefill chunks
        (default: one causal prompt, prefill_tokens^2 / 2)."""
        ...

    def decode_mean(self, batch: int, kv_tokens: int, steps: int) -> float:
        """Mean duration of `steps` decode-only steps of `batch` sequences starting at kv_tokens of KV."""
        ...


class CachedStepCost:
    """A `PerfModel` memoised for the simulator.

    The roofline step time is base(tokens in the step) + a x KV tokens + b x attention pairs: weights cost
    depends on the token count only, attention is linear in what it reads and computes. That form is checked
    numerically at construction; where it does not hold, every call goes to the model.
    """

    def __init__(self, perf: PerfModel, probe: int = 100_000) -> None:
        self.inner = perf
        self.kv_capacity_tokens = int(perf.kv_capacity_tokens)
        self._base: list[float] = []  # by tokens in the step (prefill + decode), with no KV and no pairs

        def exact(p: int, b: int, kv: int, pairs: float | None = None) -> float:
            return perf.step_profile(p, b, kv, prefill_attention_pairs=pairs).duration_s

        self._exact = exact
        self._kv_slope = (exact(0, 8, probe) - exact(0, 8, 0)) / probe
        self._pair_slope = (exact(512, 8, 0, float(probe)) - exact(512, 8, 0, 0.0)) / probe
        cases = ((0, 1), (0, 64), (512, 32), (4096, 0), (1000, 200), (8000, 192))
        self.affine = all(
            math.isclose(
                exact(p, b, kv, pairs),
                exact(p + b, 0, 0, 0.0) + self._kv_slope * kv + self._pair_slope * pairs,
                rel_tol=1e-9,
                abs_tol=1e-12,
            )
            for p, b in cases
            for kv in (0, probe // 7, probe * 3)
            for pairs in (p * p / 2, p * p / 5)
        )

    def _base_of(self, tokens: int) -> float:
        bases = self._base
        if tokens >= len(bases):
            bases.extend(self._exact(t, 0, 0, 0.0) for t in range(len(bases), tokens + 1))
        return bases[tokens]

    def step_seconds(
        self, prefill_tokens: int, decode_seqs: int, kv_tokens: int, prefill_pairs: float | None = None
    ) -> float:
        """Step time from the cached base plus the KV and attention-pair terms."""
        if not self.affine:
            return self._exact(prefill_tokens, decode_seqs, kv_tokens, prefill_pairs)
        pairs = prefill_tokens * prefill_tokens / 2 if prefill_pairs is None else prefill_pairs
        return self._base_of(prefill_tokens + decode_seqs) + self._kv_slope * kv_tokens + self._pair_slope * pairs

    def decode_mean(self, batch: int, kv_tokens: int, steps: int) -> float:
        """Mean of `steps` decode steps whose KV grows by `batch` per step (exact when affine)."""
        if not self.affine:
            first = self._exact(0, batch, kv_tokens)
            if steps <= 1:
                return first
            return 0.5 * (first + self._exact(0, batch, kv_tokens + batch * (steps - 1)))
        return self._base_of(batch) + self._kv_slope * (kv_tokens + batch * (steps - 1) / 2)


@dataclass
class IntervalStats:
    """Samples collected since the last decision tick (the simulator clears them after each tick)."""

    ttft: list[float] = field(default_factory=list)  # of requests whose first token came in the interval
    # Token gaps as vLLM's inter-token-latency histogram sees them: `gap_count[i]` gaps of `gap_s[i]` seconds
    gap_s: list[float] = field(default_factory=list)
    gap_count: list[int] = field(default_factory=list)

    def clear(self) -> None:
        """Start a new interval."""
        self.ttft.clear()
        self.gap_s.clear()
        self.gap_count.clear()


Scheduler = Callable[["ReplicaModel", float], None]
"""Callback a replica uses to ask the simulator to wake it at a virtual time."""


class ReplicaModel(Protocol):
    """What the cluster simulator needs from one replica's engine model."""

    rid: int
    outstanding: int  # requests submitted and not finished
    version: int  # bumped whenever a previously scheduled wake-up becomes void
    on_finish: Callable[[ReplicaModel, int, float], None] | None  # called after each request ends
    busy_s: float  # virtual seconds spent executing steps
    generated_tokens: int
    prefilled_tokens: int
    completed: int  # requests finished (vLLM's request_success_total)

    def submit(self, req: int, now: float) -> None:
        """Accept request `req` at `now`."""
        ...

    def wake(self, now: float) -> None:
        """Handle the wake-up the replica asked for at `now`."""
        ...

    def sync(self, now: float) -> None:
        """Bring counters and samples up to `now` without changing what happens (before observing)."""
        ...

    @property
    def num_waiting(self) -> int:
        """Requests not yet admitted to the running batch."""
        ...

    @property
    def num_running(self) -> int:
        """Requests admitted (prefilling or decoding)."""
        ...

    @property
    def kv_usage(self) -> float:
        """Share of the KV cache in use, 0..1."""
        ...

    def set_cost(self, cost: StepCost) -> None:
        """Swap the performance model (e.g. after a power cap changes)."""
        ...


class _Prefill:
    """An admitted sequence still (re)computing its context."""

    __slots__ = ("ctx", "out_left", "remaining", "req", "resumed")

    def __init__(self, req: int, ctx: int, out_left: int, resumed: bool) -> None:
        self.req = req
        self.ctx = ctx  # tokens of context to compute (prompt, or prompt + generated after preemption)
        self.remaining = ctx
        self.out_left = out_left  # tokens still to generate, counting the one this prefill produces
        self.resumed = resumed  # recomputation after preemption: its first token was already recorded


class FastReplica:
    """Continuous batching evaluated only at events; see the module docstring for the model.

    KV is counted in tokens plus, per running sequence, half a block of rounding (paged attention allocates
    16-token blocks). Like vLLM, a prefill allocates KV chunk by chunk, a new request is admitted when its
    first chunk fits, and when a step's allocation does not fit the most recently admitted running
    sequence is preempted (recompute) and nothing new is admitted in that step.
    """

    def __init__(
        self,
        rid: int,
        cost: StepCost,
        log: RequestLog,
        stats: IntervalStats,
        schedule: Scheduler,
        *,
        max_num_batched_tokens: int = 8192,
        max_num_seqs: int = 256,
        block_size: int = 16,
        on_finish: Callable[[ReplicaModel, int, float], None] | None = None,
    ) -> None:
        self.rid = rid
        self.cost = cost
        self.cap = int(cost.kv_capacity_tokens)
        self.log = log
        self.stats = stats
        self._schedule = schedule
        self.on_finish = on_finish
        self.budget = max_num_batched_tokens
        self.max_seqs = max_num_seqs
        self._half_block = (block_size - 1) / 2  # expected rounding waste of one sequence's last block
        self.outstanding = 0
        self.version = 0
        self.busy_s = 0.0
        self.generated_tokens = 0
        self.prefilled_tokens = 0
        self.completed = 0
        self.waiting: deque[tuple[int, int, int, bool]] = deque()  # (req, ctx, out_left, resumed)
        self.prefill: list[_Prefill] = []
        self._prefill_by_req: dict[int, _Prefill] = {}
        # Decoding sequences: req -> (finish iteration, context at join - join iteration)
        self.decoding: dict[int, tuple[int, int]] = {}
        self._finish_heap: list[tuple[int, int]] = []
        self._admit_order: list[int] = []  # running requests, newest last (lazy: finished ones skipped)
        self.it = 0  # engine steps completed
        self.batch = 0  # decoding sequences
        # KV of decoding sequences at the start of step `it` is _ctx_sum + batch * it (the token each one
        # computes in that step included); _ctx_sum sums (context + 1 - join iteration) over them.
        self._ctx_sum = 0
        self._reserved = 0  # KV of prefilling sequences: context computed so far
        # The phase in flight, from `_t0`: when `_chunks` is set, a prefill step of `_head_dt` seconds (the
        # head), then `_steps` decode steps of `_dt` seconds each (the run)
        self._busy = False
        self._t0 = 0.0
        self._head_dt = 0.0
        self._dt = 0.0
        self._steps = 0
        self._chunks: list[tuple[_Prefill, int]] = []

    # --- observable state -------------------------------------------------------------------------------

    @property
    def kv_tokens(self) -> int:
        """KV tokens in use at the start of the phase in flight."""
        return self._ctx_sum + self.batch * self.it + self._reserved

    @property
    def kv_usage(self) -> float:
        """Share of the KV cache in use."""
        return min(1.0, self.kv_tokens / self.cap) if self.cap else 0.0

    @property
    def num_waiting(self) -> int:
        """Requests waiting for admission."""
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        """Requests prefilling or decoding."""
        return self.batch + len(self.prefill)

    def set_cost(self, cost: StepCost) -> None:
        """Use a new performance model from the next phase on."""
        self.cost = cost
        self.cap = int(cost.kv_capacity_tokens)

    # --- events -----------------------------------------------------------------------------------------

    def submit(self, req: int, now: float) -> None:
        """Queue a request; a decode run in flight is cut at its next step boundary to admit it."""
        log = self.log
        ctx = log.prompt[req]
        out = log.output[req]
        log.replica[req] = self.rid
        if ctx + out > self.cap:
            # Like vLLM, a request longer than the whole KV cache is refused outright
            log.status[req] = RequestLog.FAILED
            log.finish[req] = now
            return
        self.waiting.append((req, ctx, out, False))
        self.outstanding += 1
        if not self._busy:
            self._plan(now)
            return
        if self._t0 > now:
            # The phase was planned from a future step boundary and nothing of it has run: plan it again
            self._plan(self._t0)
            return
        if self._chunks:
            if not self._steps:
                return  # a lone prefill step in flight; the step after it will consider this request
            # A merged phase: its prefill step completes no request, so its effects may be booked early
            self._apply_head()
        if (
            self._steps
            and len(self.waiting) == 1
            and self.batch + len(self.prefill) < self.max_seqs
            and self.kv_tokens + min(ctx, self.budget) + self._half_block * (self.batch + 1) <= self.cap
        ):
            done = max(0, math.ceil((now - self._t0) / self._dt - 1e-9))
            if done < self._steps:
                # No sequence finishes before the run ends, so the first `done` steps can be booked now
                self._book_decode(done)
                self._plan(self._t0)

    def wake(self, now: float) -> None:
        """Finish the phase in flight at `now` and plan the next one."""
        if self._chunks:
            self._apply_head()
        self._book_decode(self._steps)
        heap = self._finish_heap
        while heap and heap[0][0] <= self.it:
            fin, req = heapq.heappop(heap)
            entry = self.decoding.get(req)
            if entry is None or entry[0] != fin:
                continue
            del self.decoding[req]
            self.batch -= 1
            self._ctx_sum -= entry[1]
            self._complete(req, now)
        self._busy = False
        self._plan(now)

    def sync(self, now: float) -> None:
        """Book the steps of the phase in flight that have ended by `now` (counters are then current)."""
        if not self._busy or self._t0 > now:
            return
        if self._chunks:
            if not self._steps or self._t0 + self._head_dt > now:
                return
            self._apply_head()
        if self._steps:
            done = min(self._steps - 1, int((now - self._t0) / self._dt))
            if done > 0:
                self._book_decode(done)

    # --- internals --------------------------------------------------------------------------------------

    def _book_decode(self, k: int) -> None:
        """Account k decode steps of the run in flight and move its start past them."""
        if k <= 0:
            return
        self.it += k
        batch = self.batch
        if batch:
            self.generated_tokens += batch * k
            self.stats.gap_s.append(self._dt)
            self.stats.gap_count.append(batch * k)
        self.busy_s += k * self._dt
        self._t0 += k * self._dt
        self._steps -= k

    def _apply_head(self) -> None:
        """Account the prefill step that opens the phase: a token for every decoder, chunks computed."""
        t1 = self._t0 + self._head_dt
        self.it += 1
        batch = self.batch
        if batch:
            self.generated_tokens += batch
            self.stats.gap_s.append(self._head_dt)
            self.stats.gap_count.append(batch)
        self.busy_s += self._head_dt
        self._finish_prefill_chunks(t1)
        self._t0 = t1
        self._head_dt = 0.0

    def _finish_prefill_chunks(self, now: float) -> None:
        log = self.log
        for p, chunk in self._chunks:
            p.remaining -= chunk
            self._reserved += chunk
            self.prefilled_tokens += chunk
            if p.remaining > 0:
                continue
            self.prefill.remove(p)
            del self._prefill_by_req[p.req]
            self._reserved -= p.ctx
            self.generated_tokens += 1
            req = p.req
            if not p.resumed:
                log.first_token[req] = now
                self.stats.ttft.append(now - log.arrival[req])
            if p.out_left <= 1:
                self._complete(req, now)
                continue
            fin = self.it + p.out_left - 1
            offset = p.ctx + 1 - self.it
            self.decoding[req] = (fin, offset)
            self.batch += 1
            self._ctx_sum += offset
            heapq.heappush(self._finish_heap, (fin, req))
        self._chunks = []

    def _complete(self, req: int, now: float) -> None:
        log = self.log
        log.finish[req] = now
        log.status[req] = RequestLog.OK
        self.outstanding -= 1
        self.completed += 1
        if self.on_finish is not None:
            self.on_finish(self, req, now)

    def _preempt_newest(self) -> bool:
        """Recompute preemption of the most recently admitted running sequence; False if none runs."""
        order = self._admit_order
        while order:
            req = order.pop()
            entry = self.decoding.pop(req, None)
            if entry is not None:
                fin, offset = entry
                self.batch -= 1
                self._ctx_sum -= offset
                # Its context is the prompt plus every token generated so far
                self.waiting.appendleft((req, offset + self.it - 1, fin - self.it + 1, True))
                self.log.preemptions += 1
                return True
            p = self._prefill_by_req.pop(req, None)
            if p is not None:
                self.prefill.remove(p)
                self._reserved -= p.ctx - p.remaining
                self.waiting.appendleft((req, p.ctx, p.out_left, p.resumed))
                self.log.preemptions += 1
                return True
        return False

    def _plan(self, now: float) -> None:
        """Choose the next phase at `now` and ask to be woken at its end."""
        batch = self.batch
        if not self.prefill and not self.waiting and batch:
            # The common case: decode only, until the next finish or until KV runs out
            it = self.it
            kv = self._ctx_sum + batch * it
            room = int((self.cap - kv - self._half_block * batch) // batch) + 1
            if room >= 1:
                k = self._finish_heap[0][0] - it
                if room < k:
                    k = room
                if k < 1:
                    k = 1
                self._dt = self.cost.decode_mean(batch, kv, k)
                self._steps = k
                self._busy = True
                self._t0 = now
                self.version += 1
                self._schedule(self, now + k * self._dt)
                return
        self._plan_general(now)

    def _run_after_head(self, chunks: list[tuple[_Prefill, int]]) -> int:
        """Decode steps that can follow a prefill step in the same phase (0: wake after the prefill step).

        Only when the step completes every prefill and none of them finishes on its first token, so nothing
        observable happens between the two parts; the run then lasts until the next finish or KV limit.
        """
        if len(chunks) != len(self.prefill):
            return 0
        it1 = self.it + 1
        k = self._finish_heap[0][0] - it1 if self._finish_heap else 1 << 60
        kv = self._ctx_sum + self.batch * it1
        for p, c in chunks:
            if c != p.remaining or p.out_left <= 1:
                return 0
            if p.out_left - 1 < k:
                k = p.out_left - 1
            kv += p.ctx + 1
        batch = self.batch + len(chunks)
        room = int((self.cap - kv - self._half_block * batch) // batch) + 1
        if room < k:
            k = room
        if k <= 0:
            return 0
        self._dt = self.cost.decode_mean(batch, kv, k)
        return k

    def _plan_general(self, now: float) -> None:
        cap = self.cap
        half = self._half_block
        preempted = False
        while True:
            batch = self.batch
            budget = self.budget - batch
            chunks: list[tuple[_Prefill, int]] = []
            prefill_tokens = 0
            pairs = 0.0
            for p in self.prefill:
                if budget <= 0:
                    break
                c = p.remaining if p.remaining < budget else budget
                chunks.append((p, c))
                budget -= c
                prefill_tokens += c
                pairs += c * (p.ctx - p.remaining + c / 2)
            seqs = batch + len(self.prefill)
            # KV this step needs: decoders' next token, prefills' chunks, block rounding of every sequence
            need = self._ctx_sum + batch * self.it + self._reserved + prefill_tokens + half * seqs
            if need <= cap or not seqs:
                break
            self._preempt_newest()
            preempted = True
        waiting = self.waiting
        if waiting and not preempted:
            while waiting and budget > 0 and seqs < self.max_seqs:
                req, ctx, out_left, resumed = waiting[0]
                c = ctx if ctx < budget else budget
                if need + c + half > cap:
                    break
                waiting.popleft()
                p = _Prefill(req, ctx, out_left, resumed)
                self.prefill.append(p)
                self._prefill_by_req[req] = p
                self._admit_order.append(req)
                chunks.append((p, c))
                budget -= c
                prefill_tokens += c
                pairs += c * c / 2
                need += c + half
                seqs += 1
        step = self.cost.step_seconds
        if chunks:
            self._chunks = chunks
            # Attention reads only the decoding sequences' KV; prefill chunks are costed by their pairs
            self._head_dt = step(prefill_tokens, batch, self._ctx_sum + batch * self.it, pairs)
            self._steps = 0 if preempted or waiting else self._run_after_head(chunks)
            self._busy = True
            self._t0 = now
            self.version += 1
            self._schedule(self, now + self._head_dt + self._steps * self._dt)
            return
        self._chunks = []
        self._head_dt = 0.0
        if batch:
            kv = self._ctx_sum + batch * self.it
            k = self._finish_heap[0][0] - self.it
            # Lazily deleted heap entries can make k stale-small; that only shortens the phase
            room = int((cap - kv - half * batch) // batch) + 1
            if room < k:
                k = room
            if preempted and waiting:
                k = 1  # admission was skipped because of the preemption; the next step tries again
            if k < 1:
                k = 1
            self._dt = self.cost.decode_mean(batch, kv, k)
            self._steps = k
        else:
            return
        self._busy = True
        self._t0 = now
        self.version += 1
        self._schedule(self, now + self._steps * self._dt)
