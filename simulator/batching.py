"""A continuous-batching scheduler that composes engine iterations the way vLLM's V1 scheduler does.

Pure: no I/O and no clock. The caller passes `now` and advances its own clock by each step's duration, so
the same class drives the real-time engine and a discrete-event cluster simulator.

Per iteration, within a token budget (max_num_batched_tokens) and a sequence cap (max_num_seqs):
  1. running sequences first, in admission order: one token for a decode, a chunk for an unfinished prefill
     (chunked prefill);
  2. when a sequence needs a KV block and none is free, the most recently admitted running sequence is
     preempted (recompute: its KV is dropped and it re-prefills prompt + generated tokens later);
  3. if nothing was preempted, waiting sequences are admitted first-come first-served (preempted ones first).
KV cache is accounted in 16-token blocks, as vLLM's paged attention does.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from catalogue.perf import ModelDoesNotFitError, PerfModel

RequestId = str | int
Role = Literal["both", "prefill", "decode"]


@dataclass(frozen=True)
class SimRequest:
    """A generation request: prompt length, tokens to generate, and when it arrives (seconds)."""

    id: RequestId
    prompt_tokens: int
    max_tokens: int
    arrival_s: float = 0.0


@dataclass(frozen=True)
class StepResult:
    """What one iteration did; tokens count as produced at the end of the iteration (now + duration_s)."""

    duration_s: float
    first_tokens: list[RequestId] = field(default_factory=list)  # requests that got their first token
    tokens: list[RequestId] = field(default_factory=list)  # every request that got a token (incl. first)
    finished: list[RequestId] = field(default_factory=list)  # requests that reached max_tokens
    preempted: list[RequestId] = field(default_factory=list)  # requests evicted to free KV (recompute)
    admitted: list[RequestId] = field(default_factory=list)  # requests scheduled for the first time
    prefill_tokens: int = 0  # prompt (or recompute) tokens processed
    decode_seqs: int = 0  # sequences that decoded one token
    activity: float = 0.0  # power activity of the iteration, 0..1


@dataclass
class _Seq:
    req: RequestId
    prompt: int
    max_tokens: int
    ready_s: float
    order: int  # arrival order, the final tie-break
    computed: int = 0  # tokens whose KV is in the cache
    generated: int = 0
    blocks: int = 0
    started: bool = False
    preemptions: int = 0

    @property
    def length(self) -> int:
        return self.prompt + self.generated


class BatchScheduler:
    """FCFS continuous batching with chunked prefill, paged KV accounting and recompute preemption."""

    def __init__(
        self,
        perf: PerfModel,
        max_num_batched_tokens: int = 8192,
        max_num_seqs: int = 256,
        *,
        role: Role = "both",
        block_size: int = 16,
    ) -> None:
        if max_num_batched_tokens < 1 or max_num_seqs < 1 or block_size < 1:
            raise ValueError("max_num_batched_tokens, max_num_seqs and block_size must be at least 1")
        if role not in ("both", "prefill", "decode"):
            raise ValueError(f"role must be both, prefill or decode, got {role!r}")
        perf.require_fit()
        self.perf = perf
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.role: Role = role
        self.block_size = block_size
        self.total_blocks = perf.kv_capacity_tokens // block_size
        if self.total_blocks < 1:
            raise ModelDoesNotFitError(f"{perf.model.name}: KV cache holds less than one {block_size}-token block")
        self._free_blocks = self.total_blocks
        self._running: list[_Seq] = []
        self._waiting: list[tuple[float, int, _Seq]] = []  # sorted by (ready time, arrival order)
        self._resumed: deque[_Seq] = deque()  # preempted sequences, served before new arrivals
        self._ids: set[RequestId] = set()
        self._order = 0

    @property
    def num_running(self) -> int:
        """Sequences admitted and holding KV cache."""
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        """Sequences queued (new or preempted), including ones whose arrival time is still ahead."""
        return len(self._waiting) + len(self._resumed)

    @property
    def kv_usage(self) -> float:
        """Share of KV cache blocks in use, 0..1."""
        return 1.0 - self._free_blocks / self.total_blocks

    @property
    def max_request_tokens(self) -> int:
        """Longest prompt + generation one request may have: the whole KV cache."""
        return self.total_blocks * self.block_size

    def resize_kv(self, perf: PerfModel) -> None:
        """Switch to another replica shape (an elastic resize): new step costs, KV blocks scaled to its capacity."""
        total = max(1, perf.kv_capacity_tokens // self.block_size)
        self._free_blocks += total - self.total_blocks
        self.total_blocks = total
        self.perf = perf

    def has_work(self) -> bool:
        """Whether any request is running or waiting."""
        return bool(self._running or self._waiting or self._resumed)

    def next_ready_s(self) -> float | None:
        """When the earliest queued request becomes schedulable, or None if nothing is queued."""
        if self._resumed:
            return self._resumed[0].ready_s
        return self._waiting[0][0] if self._waiting else None

    def add(self, req: SimRequest) -> None:
        """Queue a request; it becomes schedulable at arrival_s (plus KV transfer time in the decode role)."""
        if req.prompt_tokens < 1 or req.max_tokens < 1:
            raise ValueError(f"request {req.id!r}: prompt_tokens and max_tokens must be at least 1")
        if req.id in self._ids:
            raise ValueError(f"request {req.id!r} is already queued or running")
        max_tokens = 1 if self.role == "prefill" else req.max_tokens
        if req.prompt_tokens + max_tokens > self.max_request_tokens:
            raise ValueError(
                f"request {req.id!r} needs {req.prompt_tokens + max_tokens} tokens of KV cache; "
                f"the engine holds {self.max_request_tokens}"
            )
        ready = req.arrival_s
        if self.role == "decode":
            ready += self.perf.kv_transfer_seconds(req.prompt_tokens)
        seq = _Seq(req.id, req.prompt_tokens, max_tokens, ready, self._order)
        if self.role == "decode":
            # The prompt's KV arrives from a prefill replica; only the last prompt token is recomputed here.
            seq.computed = req.prompt_tokens - 1
        self._order += 1
        self._ids.add(req.id)
        bisect.insort(self._waiting, (ready, seq.order, seq), key=lambda item: (item[0], item[1]))

    def abort(self, req_id: RequestId) -> bool:
        """Drop a request wherever it is and free its KV cache; False if unknown or already finished."""
        if req_id not in self._ids:
            return False
        self._ids.discard(req_id)
        for i, seq in enumerate(self._running):
            if seq.req == req_id:
                self._free_blocks += seq.blocks
                del self._running[i]
                return True
        for i, (_, _, seq) in enumerate(self._waiting):
            if seq.req == req_id:
                del self._waiting[i]
                return True
        for seq in self._resumed:
            if seq.req == req_id:
                self._resumed.remove(seq)
                self._free_blocks += seq.blocks
                return True
        return False

    def _blocks_needed(self, seq: _Seq, tokens: int) -> int:
        return max(0, math.ceil((seq.computed + tokens) / self.block_size) - seq.blocks)

    def _preempt(self, seq: _Seq) -> None:
        self._free_blocks += seq.blocks
        seq.blocks = 0
        seq.computed = 0
        seq.preemptions += 1
        self._resumed.appendleft(seq)

    def _next_waiting(self, now: float) -> _Seq | None:
        if self._resumed:
            return self._resumed[0] if self._resumed[0].ready_s <= now else None
        if self._waiting and self._waiting[0][0] <= now:
            return self._waiting[0][2]
        return None

    def _pop_waiting(self) -> _Seq:
        if self._resumed:
            return self._resumed.popleft()
        return self._waiting.pop(0)[2]

    def step(self, now: float) -> StepResult:
        """Compose and account one iteration starting at `now`; an idle result has duration 0."""
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[_Seq, int]] = []
        preempted: list[RequestId] = []
        admitted: list[RequestId] = []
        i = 0
        while i < len(self._running) and budget > 0:
            seq = self._running[i]
            n = min(seq.length - seq.computed, budget)
            need = self._blocks_needed(seq, n)
            evicted_itself = False
            while need > self._free_blocks and not evicted_itself:
                victim = self._running.pop()  # lowest priority: admitted last
                self._preempt(victim)
                preempted.append(victim.req)
                evicted_itself = victim is seq
            if evicted_itself:
                break
            self._free_blocks -= need
            seq.blocks += need
            scheduled.append((seq, n))
            budget -= n
            i += 1
        if not preempted:
            while budget > 0 and len(self._running) < self.max_num_seqs:
                seq_or_none = self._next_waiting(now)
                if seq_or_none is None:
                    break
                seq = seq_or_none
                n = min(seq.length - seq.computed, budget)
                need = self._blocks_needed(seq, n)
                if need > self._free_blocks:
                    break
                self._pop_waiting()
                self._free_blocks -= need
                seq.blocks += need
                self._running.append(seq)
                if not seq.started:
                    seq.started = True
                    admitted.append(seq.req)
                scheduled.append((seq, n))
                budget -= n
        return self._account(scheduled, preempted, admitted)

    def _account(
        self, scheduled: list[tuple[_Seq, int]], preempted: list[RequestId], admitted: list[RequestId]
    ) -> StepResult:
        prefill_tokens = 0
        pairs = 0.0
        decode_seqs = 0
        kv_tokens = 0
        for seq, n in scheduled:
            if n == 1 and seq.computed == seq.length - 1 and (seq.generated > 0 or self.role == "decode"):
                decode_seqs += 1
                kv_tokens += seq.computed + 1
            else:
                prefill_tokens += n
                pairs += n * (seq.computed + n / 2)
        profile = self.perf.step_profile(prefill_tokens, decode_seqs, kv_tokens, prefill_attention_pairs=pairs)
        first: list[RequestId] = []
        tokens: list[RequestId] = []
        finished: list[RequestId] = []
        for seq, n in scheduled:
            seq.computed += n
            if seq.computed < seq.length:
                continue  # a prefill chunk that does not reach the end of the prompt samples nothing
            if seq.generated == 0:
                first.append(seq.req)
            seq.generated += 1
            tokens.append(seq.req)
            if seq.generated >= seq.max_tokens:
                finished.append(seq.req)
                self._free_blocks += seq.blocks
                self._running.remove(seq)
                self._ids.discard(seq.req)
        return StepResult(
            duration_s=profile.duration_s,
            first_tokens=first,
            tokens=tokens,
            finished=finished,
            preempted=preempted,
            admitted=admitted,
            prefill_tokens=prefill_tokens,
            decode_seqs=decode_seqs,
            activity=profile.activity,
        )
