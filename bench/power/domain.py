"""One power domain shared by several simulated services: the draw model, the capping policies compared, and the
coordinator that lets each service's `ClusterSimulator` see the same domain decision at every tick.

Each service runs in its own `ClusterSimulator` (one service per simulator), in its own thread; their `PowerPolicy`
ports meet at a barrier every tick, the last one to arrive runs the domain's policy for all of them, and every
simulator continues with its share of the caps. Ticks are at the same virtual times in every simulator, so the
run is deterministic.

Draw model. The simulator's replicas report busy time only; a GPU busy on bandwidth-bound decode draws less than
one busy on compute-bound prefill (catalogue/perf.py's StepProfile.activity). Over each interval a replica's
activity is its prefill share of the interval at activity 1 (prefilled tokens at the model's prefill speed under
the cap in force) plus the rest of its busy time at the decode activity of its current batch; draw per GPU is
idle + (TDP - idle) x activity, never above the cap.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autoscaler.power import Domain, GPUState, PowerCapper
from catalogue.perf import PerfModel
from simulator.cluster.replica import FastReplica
from simulator.cluster.seams import ReplicaView

Key = tuple[str, int]  # (service, replica id)
_TOLERANCE_W = 0.1  # a domain whose GPUs all sit exactly at caps summing to the budget is not over it


@dataclass(frozen=True)
class ServicePower:
    """A service of the domain as the power policies see it."""

    name: str
    priority: int
    prefill_share: float  # < 0.5 decode-heavy


@dataclass(frozen=True)
class ReplicaPower:
    """One replica at a tick: its GPUs' measured draw each and the cap in force."""

    service: str
    replica_id: int
    priority: int
    prefill_share: float
    gpus: int
    drawn_w: float  # per GPU
    limit_w: float | None


class CapPolicy(Protocol):
    """A domain capping policy: per-GPU cap for each replica (absent: keep; None: uncap)."""

    name: str

    def decide(self, now: float, budget_w: float, replicas: Sequence[ReplicaPower]) -> dict[Key, float | None]: ...


@dataclass
class NoCapping:
    """Every GPU at its default limit."""

    name: str = "no capping"

    def decide(self, now: float, budget_w: float, replicas: Sequence[ReplicaPower]) -> dict[Key, float | None]:
        return {}


@dataclass
class StaticCaps:
    """Dynamo-style: a fixed per-pod cap, the budget shared evenly over every GPU, set once."""

    tdp_w: float
    min_w: float
    name: str = "static caps"

    def decide(self, now: float, budget_w: float, replicas: Sequence[ReplicaPower]) -> dict[Key, float | None]:
        gpus = sum(r.gpus for r in replicas)
        cap = max(self.min_w, min(self.tdp_w, budget_w / max(gpus, 1)))
        return {(r.service, r.replica_id): None if cap >= self.tdp_w else cap for r in replicas}


@dataclass
class PolcaLike:
    """Two thresholds on measured draw (POLCA-like): above `t1` cap low priority to `low_w`; above `t2` also cap
    high priority to `high_w`; release one level once draw is below `release` x budget. Purely reactive."""

    tdp_w: float
    low_w: float
    high_w: float
    high_priority: int
    t1: float = 0.90
    t2: float = 0.97
    release: float = 0.80
    name: str = "POLCA-like"
    level: int = 0

    def decide(self, now: float, budget_w: float, replicas: Sequence[ReplicaPower]) -> dict[Key, float | None]:
        drawn = sum(r.drawn_w * r.gpus for r in replicas)
        if drawn > self.t2 * budget_w:
            self.level = 2
        elif drawn > self.t1 * budget_w:
            self.level = max(self.level, 1)
        elif drawn < self.release * budget_w:
            self.level = max(0, self.level - 1)
        out: dict[Key, float | None] = {}
        for r in replicas:
            low = r.priority < self.high_priority
            cap = self.low_w if low and self.level >= 1 else self.high_w if self.level >= 2 else None
            out[(r.service, r.replica_id)] = cap
        return out


@dataclass
class Ebbtide:
    """The operator's power core (autoscaler/power.py) on the domain, one GPUState per GPU."""

    tdp_w: float
    min_w: float
    idle_w: float
    hysteresis_percent: float = 5.0
    capper: PowerCapper = field(default_factory=PowerCapper)
    name: str = "Ebbtide"

    def decide(self, now: float, budget_w: float, replicas: Sequence[ReplicaPower]) -> dict[Key, float | None]:
        gpus: list[GPUState] = []
        for r in replicas:
            for i in range(r.gpus):
                gpus.append(
                    GPUState(
                        f"{r.service}-{r.replica_id}",
                        i,
                        self.tdp_w,
                        self.min_w,
                        self.idle_w,
                        r.drawn_w,
                        r.limit_w,
                        None,
                        r.service,
                        r.priority,
                        1.0,
                        r.prefill_share,
                    )
                )
        domain = Domain("domain", budget_w, tuple(g.key for g in gpus), hysteresis_percent=self.hysteresis_percent)
        plan = self.capper.tick(now, [domain], gpus)
        out: dict[Key, float | None] = {}
        for r in replicas:
            caps = [plan.caps.get((f"{r.service}-{r.replica_id}", i)) for i in range(r.gpus)]
            capped = [c for c in caps if c is not None]
            out[(r.service, r.replica_id)] = min(capped) if capped else None
        return out


@dataclass
class Tally:
    """What the domain saw: draw per tick, seconds over budget, worst overshoot, cap changes, energy."""

    times: list[float] = field(default_factory=list)
    drawn_w: list[float] = field(default_factory=list)
    seconds_over: float = 0.0
    seconds_over_beyond_1s: float = 0.0  # of each excursion over the budget, the seconds after its first
    longest_over_s: float = 0.0
    worst_over_w: float = 0.0
    cap_changes: int = 0  # per-GPU limit changes over the whole run, warm-up included
    energy_j: float = 0.0
    low_tokens: int = 0  # generated tokens of the lower-priority services within the measured window
    low_tokens_before: int | None = None  # their tokens when the measured window opened


class PowerDomain:
    """Couples the services' simulators: each `port(service)` is a `PowerPolicy` for that service's simulator."""

    def __init__(
        self,
        policy: CapPolicy,
        budget_w: float,
        services: Sequence[ServicePower],
        perf: PerfModel,
        interval_s: float,
        measure_from_s: float,
        high_priority: int,
    ) -> None:
        self.policy = policy
        self.budget_w = budget_w
        self.services = {s.name: s for s in services}
        self.perf = perf
        self.interval_s = interval_s
        self.measure_from_s = measure_from_s
        self.high_priority = high_priority
        self.engines: dict[Key, FastReplica] = {}
        self.tally = Tally()
        self._pending: dict[str, tuple[float, list[ReplicaView]]] = {}
        self._out: dict[str, dict[int, float | None]] = {}
        self._marks: dict[Key, tuple[int, int]] = {}  # (prefilled, generated) tokens at the previous tick
        self._barrier = threading.Barrier(len(services), action=self._decide)
        self._perf_by_cap: dict[float | None, PerfModel] = {}
        self._run_s = 0.0  # length of the excursion over the budget in progress

    def engine_factory(self, service: str) -> type[FastReplica]:
        """A FastReplica class that registers each engine it builds under (service, replica id)."""
        domain = self

        class Registered(FastReplica):
            def __init__(self, rid: int, *args: object, **kwargs: object) -> None:
                super().__init__(rid, *args, **kwargs)  # type: ignore[arg-type]
                domain.engines[(service, rid)] = self

        return Registered

    def port(self, service: str) -> _Port:
        return _Port(self, service)

    def abort(self) -> None:
        """Release every waiting simulator (one of them failed)."""
        self._barrier.abort()

    def _capped_perf(self, cap: float | None) -> PerfModel:
        perf = self._perf_by_cap.get(cap)
        if perf is None:
            perf = self.perf.with_power_limit(cap)
            self._perf_by_cap[cap] = perf
        return perf

    def _draw(self, key: Key, view: ReplicaView) -> float:
        """Per-GPU draw of a replica over the interval just ended (module docstring)."""
        gpu = self.perf.gpu
        engine = self.engines.get(key)
        if engine is None or view.state == "starting":
            return gpu.idle_w
        prefilled, generated = engine.prefilled_tokens, engine.generated_tokens
        before = self._marks.get(key, (0, 0))
        self._marks[key] = (prefilled, generated)
        perf = self._capped_perf(view.power_limit_w)
        prefill_s = (prefilled - before[0]) * perf.prefill_seconds(2048) / 2048
        busy_s = view.utilisation * self.interval_s
        prefill_s = min(prefill_s, busy_s)
        batch = max(1, engine.num_running)
        decode_activity = perf.step_profile(0, batch, batch * 1500).activity
        activity = (prefill_s + (busy_s - prefill_s) * decode_activity) / self.interval_s
        draw = gpu.idle_w + (gpu.tdp_w - gpu.idle_w) * min(1.0, activity)
        limit = gpu.tdp_w if view.power_limit_w is None else view.power_limit_w
        return min(limit, draw)

    def _decide(self) -> None:
        now = next(iter(self._pending.values()))[0]
        replicas: list[ReplicaPower] = []
        for name in sorted(self._pending):
            svc = self.services[name]
            for v in self._pending[name][1]:
                key = (name, v.replica_id)
                drawn = self._draw(key, v)
                replicas.append(
                    ReplicaPower(name, v.replica_id, svc.priority, svc.prefill_share, v.gpus, drawn, v.power_limit_w)
                )
        total = sum(r.drawn_w * r.gpus for r in replicas)
        t = self.tally
        if now > self.measure_from_s:
            t.times.append(now)
            t.drawn_w.append(total)
            t.energy_j += total * self.interval_s
            if total > self.budget_w + _TOLERANCE_W:
                t.seconds_over += self.interval_s
                self._run_s += self.interval_s
                if self._run_s > 1.0:
                    t.seconds_over_beyond_1s += self.interval_s
                t.longest_over_s = max(t.longest_over_s, self._run_s)
                t.worst_over_w = max(t.worst_over_w, total - self.budget_w)
            else:
                self._run_s = 0.0
            low = sum(
                e.generated_tokens
                for (s, _), e in self.engines.items()
                if self.services[s].priority < self.high_priority
            )
            if t.low_tokens_before is None:
                t.low_tokens_before = low
            t.low_tokens = low - t.low_tokens_before
        caps = self.policy.decide(now, self.budget_w, replicas)
        self._out = {name: {} for name in self._pending}
        for r in replicas:
            key = (r.service, r.replica_id)
            if key in caps and caps[key] != r.limit_w:
                self._out[r.service][r.replica_id] = caps[key]
                t.cap_changes += r.gpus
        self._pending.clear()


@dataclass
class _Port:
    """One simulator's PowerPolicy: hands its views to the domain and waits for the domain's caps."""

    domain: PowerDomain
    service: str

    def caps(self, now: float, replicas: Sequence[ReplicaView]) -> Mapping[int, float | None]:
        self.domain._pending[self.service] = (now, list(replicas))
        self.domain._barrier.wait()
        return self.domain._out.get(self.service, {})
