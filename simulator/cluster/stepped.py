"""A replica driven one engine iteration at a time by the engine's own `BatchScheduler` (the reference model).

Exact to the scheduler (16-token KV blocks, its admission and preemption order) but one event per engine
step, so it is the slow path: use it to validate `FastReplica` and for short traces.
"""

from __future__ import annotations

from collections.abc import Callable

from catalogue.perf import PerfModel
from simulator.batching import BatchScheduler, RequestId, SimRequest, StepResult
from simulator.cluster.records import RequestLog
from simulator.cluster.replica import CachedStepCost, IntervalStats, ReplicaModel, Scheduler, StepCost


def _perf_of(cost: StepCost | PerfModel) -> PerfModel:
    inner = cost.inner if isinstance(cost, CachedStepCost) else cost
    if not isinstance(inner, PerfModel):
        raise TypeError("SteppedReplica needs a PerfModel (BatchScheduler reads its full step profile)")
    return inner


class SteppedReplica:
    """`ReplicaModel` over `BatchScheduler.step`: wakes at the end of every engine step."""

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
        on_finish: Callable[[ReplicaModel, int, float], None] | None = None,
    ) -> None:
        self.rid = rid
        self.log = log
        self.stats = stats
        self._schedule = schedule
        self.on_finish = on_finish
        self._limits = (max_num_batched_tokens, max_num_seqs)
        self.scheduler = BatchScheduler(_perf_of(cost), max_num_batched_tokens, max_num_seqs)
        self.outstanding = 0
        self.version = 0
        self.busy_s = 0.0
        self.generated_tokens = 0
        self.prefilled_tokens = 0
        self.completed = 0
        self._pending: StepResult | None = None
        self._t0 = 0.0

    @property
    def num_waiting(self) -> int:
        """Requests queued in the scheduler."""
        return self.scheduler.num_waiting

    @property
    def num_running(self) -> int:
        """Requests holding KV cache."""
        return self.scheduler.num_running

    @property
    def kv_usage(self) -> float:
        """Share of KV blocks in use."""
        return self.scheduler.kv_usage

    def set_cost(self, cost: StepCost) -> None:
        """Use a new performance model from the next step on."""
        self.scheduler.perf = _perf_of(cost)

    def submit(self, req: int, now: float) -> None:
        """Queue a request; start stepping if the engine was idle."""
        log = self.log
        log.replica[req] = self.rid
        try:
            self.scheduler.add(SimRequest(req, log.prompt[req], log.output[req], now))
        except ValueError:
            log.status[req] = RequestLog.FAILED
            log.finish[req] = now
            return
        self.outstanding += 1
        if self._pending is None:
            self._step(now)

    def wake(self, now: float) -> None:
        """Account the step that just ended, then start the next one."""
        res = self._pending
        assert res is not None
        self._pending = None
        self.busy_s += now - self._t0
        self.generated_tokens += len(res.tokens)
        gaps = len(res.tokens) - len(res.first_tokens)
        if gaps:
            self.stats.gap_s.append(now - self._t0)
            self.stats.gap_count.append(gaps)
        self.prefilled_tokens += res.prefill_tokens
        self.log.preemptions += len(res.preempted)
        log = self.log
        for rid in res.first_tokens:
            req = self._index(rid)
            log.first_token[req] = now
            self.stats.ttft.append(now - log.arrival[req])
        for rid in res.finished:
            req = self._index(rid)
            log.finish[req] = now
            log.status[req] = RequestLog.OK
            self.outstanding -= 1
            self.completed += 1
            if self.on_finish is not None:
                self.on_finish(self, req, now)
        self._step(now)

    def sync(self, now: float) -> None:
        """Nothing to do: every step is accounted when it ends."""

    @staticmethod
    def _index(rid: RequestId) -> int:
        assert isinstance(rid, int)
        return rid

    def _step(self, now: float) -> None:
        res = self.scheduler.step(now)
        if res.duration_s <= 0:
            return
        self._pending = res
        self._t0 = now
        self.version += 1
        self._schedule(self, now + res.duration_s)
