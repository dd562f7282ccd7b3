"""Power caps under a budget: per PowerBudget domain and tick, a per-GPU cap that keeps measured and forecast
draw under the domain's watts, lowest priority first. Zero I/O; time is a parameter.

Each tick the caller hands in every GPU it knows (measured draw, the cap in force, the workload's priority, SLO
slack and prefill share, and the draw forecast over the lead time) and every domain (budget, policy, members).
`PowerCapper.tick` returns a `PowerPlan`: the cap per GPU (None = the board's default limit), and per domain its
drawn, forecast and headroom watts, its state (WithinBudget, Capping, BudgetExceeded, Infeasible) and whether the
emergency path fired. `PowerPlan.admit` answers the replica decision: may a scale-up of N GPUs at W watts each
start in this domain, by the headroom, by capping lower priorities, or not at all (PowerLimited).

How caps are chosen (one domain):
1. Need per GPU: the larger of its forecast draw and its measured draw; a GPU pinned at its cap may want more, so
   its need is at least its board default in the emergency path, where the forecast is not trusted.
2. If the needs fit the budget, caps are lifted, but only as far as the needs stay under the budget less
   `hysteresisPercent` (so a cap does not flap at the boundary); otherwise the excess is taken tier by tier.
3. Tiers are taken in order (the numbered sort key, `_tier_key`): (1) priority, lowest first; (2) services meeting
   their SLO (slack >= 0) before those missing it; (3) decode-heavy before prefill-heavy (decode barely slows under
   a cap: it is bandwidth-bound); within a tier every GPU gets the same water level (spreading the cut costs less
   throughput than a deep cut on one GPU: the cap curve is concave). `Proportional` puts every GPU in one tier.
4. No cap goes below max(floorWattsPerGpu, the board's minimum limit). GPUs above `exemptPriorityAbove` are never
   capped. If floors alone exceed the budget (every GPU with work at its floor, idle GPUs at their idle draw), the
   domain is Infeasible (every cappable GPU at its floor).
5. A GPU in several domains takes the lowest cap any of them gives it (the tighter budget wins per GPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from catalogue.gpus import GPUProfile
from catalogue.power import demand_w

GPUKey = tuple[str, int]  # (node, GPU index)
CapOrder = Literal["LowestPriorityFirst", "Proportional"]

# A measured draw this close to the cap in force means the cap binds: the GPU would draw more without it.
_PINNED = 0.97
# Caps are rounded down to whole watts (NVML takes milliwatts; whole watts keep Events readable).
_W = 1.0


class DomainState(StrEnum):
    """Where a domain stands after a tick (the PowerBudget condition of the same name is True)."""

    WITHIN_BUDGET = "WithinBudget"
    CAPPING = "Capping"
    BUDGET_EXCEEDED = "BudgetExceeded"
    INFEASIBLE = "Infeasible"


@dataclass(frozen=True)
class GPUState:
    """One GPU as the power core sees it at a tick."""

    node: str
    index: int
    tdp_w: float  # the board's default (and maximum) limit
    min_limit_w: float  # the lowest limit the board accepts
    idle_w: float
    drawn_w: float  # measured draw (DCGM_FI_DEV_POWER_USAGE), averaged over the last sample
    limit_w: float | None = None  # cap in force; None = default
    forecast_w: float | None = None  # expected uncapped draw over the lead time; None = the measured draw
    workload: str | None = None  # "namespace/name" of what runs on it; None = idle
    priority: int = 0  # the workload's PriorityClass value
    slo_slack: float = 1.0  # (SLO - observed latency) / SLO of the workload; < 0 misses its SLO
    prefill_share: float = 0.5  # share of the workload's GPU time in prefill; < 0.5 = decode-heavy

    @property
    def key(self) -> GPUKey:
        return (self.node, self.index)

    @property
    def pinned(self) -> bool:
        """The cap in force binds (measured draw is at the cap)."""
        return self.limit_w is not None and self.drawn_w >= _PINNED * self.limit_w


@dataclass(frozen=True)
class Domain:
    """A PowerBudget as the core needs it."""

    name: str
    budget_w: float
    members: tuple[GPUKey, ...]
    order: CapOrder = "LowestPriorityFirst"
    floor_w: float = 0.0  # floorWattsPerGpu (0 = each board's minimum)
    hysteresis_percent: float = 5.0
    exempt_priority_above: int | None = None


@dataclass(frozen=True)
class DomainPlan:
    """One domain's outcome of a tick."""

    name: str
    budget_w: float
    drawn_w: float  # measured, now
    forecast_w: float  # expected over the lead time under the new caps
    demand_w: float  # expected over the lead time with no caps at all
    headroom_w: float  # budget - max(drawn, forecast): what a scale-up may still add without capping
    floors_w: float  # the least the domain can draw with every cappable GPU at its floor
    state: DomainState
    message: str
    seconds_over: float  # how long measured draw has been above the budget (0 when it is not)
    emergency: bool  # measured draw crossed the budget this tick: caps were cut from measurement
    caps: Mapping[GPUKey, float | None]  # this domain's caps for its members
    overlaps: tuple[str, ...] = ()  # other domains sharing GPUs with this one
    # Watts each priority tier could give up (need above floor), lowest priority first, for admission.
    reclaimable_by_priority: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Admission:
    """The power answer to a scale-up: start it, start it after capping lower priorities, or refuse it."""

    allowed: bool
    by_capping: bool
    message: str


@dataclass(frozen=True)
class PowerPlan:
    """Every GPU's cap (the tightest over its domains) and every domain's outcome."""

    caps: Mapping[GPUKey, float | None]
    domains: Mapping[str, DomainPlan]

    def changed(self, gpus: Iterable[GPUState]) -> dict[GPUKey, float | None]:
        """The caps that differ from those in force: what the node agents must apply."""
        return {g.key: self.caps.get(g.key) for g in gpus if self.caps.get(g.key) != g.limit_w}

    def admit(self, domain: str, gpus: int, watts_per_gpu: float, priority: int) -> Admission:
        """May `gpus` more GPUs drawing `watts_per_gpu` each, of a workload at `priority`, start in `domain`?"""
        d = self.domains.get(domain)
        if d is None:
            return Admission(True, False, f"no power domain {domain!r}")
        want = gpus * watts_per_gpu
        if want <= d.headroom_w:
            return Admission(True, False, f"{want:.0f} W fits the headroom of {d.headroom_w:.0f} W")
        if d.state is DomainState.INFEASIBLE:
            return Admission(False, False, d.message)
        room = max(0.0, d.headroom_w) + sum(w for p, w in d.reclaimable_by_priority if p < priority)
        if want <= room:
            return Admission(True, True, f"{want:.0f} W fits once lower priorities are capped ({room:.0f} W)")
        return Admission(
            False,
            False,
            f"{gpus} GPU(s) x {watts_per_gpu:.0f} W would breach the {d.budget_w:.0f} W budget: headroom "
            f"{d.headroom_w:.0f} W, {room:.0f} W with lower priorities capped",
        )


@dataclass
class _Memory:
    over_since: float | None = None
    tightened_at: float | None = None  # when a cap of the domain last went down


@dataclass
class PowerCapper:
    """The power core with its memory (when each domain went over budget or last tightened a cap, each GPU's
    recent draw); `tick` is pure given that memory."""

    # A GPU's need is at least its peak draw over this window: the short-horizon forecast that keeps a bursty
    # workload from winning back watts at every dip of its draw.
    peak_window_s: float = 10.0
    # Hold-down: no cap is raised within this long of a cap going down (caps move by the forecast, not the noise).
    lift_dwell_s: float = 5.0
    memory: dict[str, _Memory] = field(default_factory=dict)
    draws: dict[GPUKey, list[tuple[float, float]]] = field(default_factory=dict)

    def tick(self, now: float, domains: Sequence[Domain], gpus: Sequence[GPUState]) -> PowerPlan:
        """Caps for every GPU of every domain, and each domain's outcome, at time `now`."""
        by_key = {g.key: g for g in gpus}
        self._remember(now, gpus)
        owners: dict[GPUKey, list[str]] = {}
        for d in domains:
            for k in d.members:
                owners.setdefault(k, []).append(d.name)
        plans: dict[str, DomainPlan] = {}
        caps: dict[GPUKey, float | None] = {}
        for d in sorted(domains, key=lambda d: d.name):
            members = [by_key[k] for k in d.members if k in by_key]
            overlaps = sorted({o for k in d.members for o in owners.get(k, []) if o != d.name})
            plan = self._domain(now, d, members, tuple(overlaps))
            plans[d.name] = plan
            for k, cap in plan.caps.items():
                caps[k] = _tighter(caps[k], cap) if k in caps else cap
        for name in list(self.memory):
            if name not in plans:
                del self.memory[name]
        return PowerPlan(caps, plans)

    def _remember(self, now: float, gpus: Sequence[GPUState]) -> None:
        horizon = now - self.peak_window_s
        for g in gpus:
            seen = [(t, w) for t, w in self.draws.get(g.key, []) if t > horizon]
            seen.append((now, g.drawn_w))
            self.draws[g.key] = seen
        for key in set(self.draws) - {g.key for g in gpus}:
            del self.draws[key]

    def _peak(self, g: GPUState) -> float:
        return max((w for _, w in self.draws.get(g.key, [])), default=g.drawn_w)

    def _domain(self, now: float, d: Domain, members: list[GPUState], overlaps: tuple[str, ...]) -> DomainPlan:
        mem = self.memory.setdefault(d.name, _Memory())
        drawn = sum(g.drawn_w for g in members)
        over = drawn > d.budget_w
        if over and mem.over_since is None:
            mem.over_since = now
        elif not over:
            mem.over_since = None
        seconds_over = 0.0 if mem.over_since is None else now - mem.over_since
        emergency = over
        need = {g.key: _need(g, emergency, self._peak(g)) for g in members}
        cappable = [g for g in members if not _exempt(d, g)]
        floors = {g.key: _floor(d, g) for g in cappable}
        fixed = sum(need[g.key] for g in members if _exempt(d, g))
        least = fixed + sum(min(need[k], f) for k, f in floors.items())
        # The domain's floors: every GPU with work at its floor, idle GPUs at their idle draw. Idle GPUs' floors do
        # not count: new work on them is a scale-up, which the admission check (PowerPlan.admit) gates.
        floors_sum = sum(floors[g.key] if g.workload is not None else need[g.key] for g in cappable)
        uncapped = sum(need.values())
        tight = _allocate(d, cappable, need, floors, d.budget_w - fixed)
        if emergency:
            new = tight
        else:
            lift = _allocate(d, cappable, need, floors, d.budget_w * (1 - d.hysteresis_percent / 100) - fixed)
            held = mem.tightened_at is not None and now - mem.tightened_at < self.lift_dwell_s
            new = {}
            for g in cappable:
                # Tighten at once; lift only as far as the hysteresis band allows, and not during the hold-down;
                # never above what the budget allows.
                old = g.limit_w if g.limit_w is not None else g.tdp_w
                t, lifted = _or_tdp(tight[g.key], g), _or_tdp(lift[g.key], g)
                new[g.key] = _default_if_full(min(t, old if held else max(old, lifted)), g)
        if any(_or_tdp(new[g.key], g) < (g.limit_w if g.limit_w is not None else g.tdp_w) for g in cappable):
            mem.tightened_at = now
        for g in members:
            if _exempt(d, g):
                new[g.key] = None
        forecast = sum(min(need[g.key], _or_tdp(new[g.key], g)) for g in members)
        capped = any(c is not None for c in new.values())
        if fixed + floors_sum > d.budget_w:
            state = DomainState.INFEASIBLE
            message = (
                f"floors alone exceed the budget: {sum(1 for g in cappable if g.workload is not None)} working GPU(s) "
                f"at their floors and the idle ones draw {floors_sum:.0f} W"
                + (f" plus {fixed:.0f} W of exempt GPUs" if fixed else "")
                + f", over the {d.budget_w:.0f} W budget"
            )
        elif over or least > d.budget_w:
            state = DomainState.BUDGET_EXCEEDED
            message = (
                f"measured draw {drawn:.0f} W is over the {d.budget_w:.0f} W budget for {seconds_over:.0f} s"
                if over
                else f"even at their floors the GPUs would draw {least:.0f} W, over the {d.budget_w:.0f} W budget"
            )
        elif capped:
            n = sum(1 for c in new.values() if c is not None)
            state = DomainState.CAPPING
            message = (
                f"{n} of {len(members)} GPU(s) capped: forecast {forecast:.0f} W (uncapped {uncapped:.0f} W) "
                f"for a budget of {d.budget_w:.0f} W"
            )
        else:
            state = DomainState.WITHIN_BUDGET
            message = f"draw {drawn:.0f} W, forecast {forecast:.0f} W, budget {d.budget_w:.0f} W"
        if overlaps:
            message += f"; shares GPUs with {', '.join(overlaps)} (the tighter budget wins per GPU)"
        reclaim: dict[int, float] = {}
        for g in cappable:
            give = min(need[g.key], _or_tdp(new[g.key], g)) - min(need[g.key], floors[g.key])
            reclaim[g.priority] = reclaim.get(g.priority, 0.0) + max(0.0, give)
        return DomainPlan(
            name=d.name,
            budget_w=d.budget_w,
            drawn_w=drawn,
            forecast_w=forecast,
            demand_w=uncapped,
            headroom_w=d.budget_w - max(drawn, forecast),
            floors_w=fixed + floors_sum,
            state=state,
            message=message,
            seconds_over=seconds_over,
            emergency=emergency,
            caps=new,
            overlaps=overlaps,
            reclaimable_by_priority=tuple(sorted(reclaim.items())),
        )


def forecast_gpu_draw(gpu: GPUProfile, utilisation: float, demand_now: float, demand_ahead: float) -> float:
    """Draw of a GPU over the lead time: its utilisation scaled by the demand forecast, through the power curve."""
    if demand_now <= 0:
        # Nothing to scale from: demand on its way is assumed to run the GPU flat out.
        util = 1.0 if demand_ahead > 0 else utilisation
    else:
        util = min(1.0, utilisation * demand_ahead / demand_now)
    return demand_w(gpu, util)


def _tighter(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _or_tdp(cap: float | None, g: GPUState) -> float:
    return g.tdp_w if cap is None else cap


def _default_if_full(cap: float, g: GPUState) -> float | None:
    return None if cap >= g.tdp_w else cap


def _exempt(d: Domain, g: GPUState) -> bool:
    return d.exempt_priority_above is not None and g.workload is not None and g.priority > d.exempt_priority_above


def _floor(d: Domain, g: GPUState) -> float:
    return min(g.tdp_w, max(d.floor_w, g.min_limit_w))


def _need(g: GPUState, emergency: bool, peak_w: float) -> float:
    """What the GPU would draw with no cap: the largest of its forecast, its draw and its recent peak; a GPU whose
    cap binds is assumed to want at least its cap (the cap hides its demand)."""
    need = max(g.drawn_w, peak_w, g.forecast_w if g.forecast_w is not None else g.drawn_w)
    if g.pinned and emergency:
        # In an emergency a binding cap is assumed to hide the worst the board can draw.
        need = g.tdp_w
    elif g.pinned and g.workload is not None:
        need = max(need, g.limit_w or g.tdp_w)
    return min(g.tdp_w, need)


def _tier_key(d: Domain, g: GPUState) -> tuple[int, int, int]:
    """Numbered sort key of capping tiers: (1) priority, lowest first; (2) meeting its SLO before missing it;
    (3) decode-heavy before prefill-heavy. Idle GPUs come first of all (capping them costs nothing)."""
    if d.order == "Proportional":
        return (0, 0, 0)
    if g.workload is None:
        return (-(2**62), 0, 0)
    return (g.priority, 0 if g.slo_slack >= 0 else 1, 0 if g.prefill_share < 0.5 else 1)


def _allocate(
    d: Domain,
    gpus: Sequence[GPUState],
    need: Mapping[GPUKey, float],
    floors: Mapping[GPUKey, float],
    target: float,
) -> dict[GPUKey, float | None]:
    """Caps that bring the expected draw of `gpus` to at most `target`, taking tiers in order."""
    caps: dict[GPUKey, float | None] = {g.key: None for g in gpus}
    excess = sum(need[g.key] for g in gpus) - target
    tiers: dict[tuple[int, int, int], list[GPUState]] = {}
    for g in sorted(gpus, key=lambda g: (_tier_key(d, g), g.node, g.index)):
        tiers.setdefault(_tier_key(d, g), []).append(g)
    for key in sorted(tiers):
        if excess <= 0:
            break
        tier = tiers[key]
        level, saved = _water_level(tier, need, floors, excess)
        for g in tier:
            if need[g.key] > level:
                caps[g.key] = max(floors[g.key], level)
            elif saved < excess:
                # This tier cannot give enough: hold even its light GPUs at the floor so a burst cannot breach.
                caps[g.key] = floors[g.key]
        excess -= saved
    if excess > 0:
        # Still over with every tier at its floor: every cappable GPU sits at its floor.
        for g in gpus:
            caps[g.key] = floors[g.key]
    by_key = {g.key: g for g in gpus}
    return {k: None if c is None else _default_if_full(c, by_key[k]) for k, c in caps.items()}


def _water_level(
    tier: Sequence[GPUState], need: Mapping[GPUKey, float], floors: Mapping[GPUKey, float], excess: float
) -> tuple[float, float]:
    """The common cap level that saves `excess` watts across the tier (or all it can), and the watts saved."""
    top = max(need[g.key] for g in tier)
    bottom = min(floors[g.key] for g in tier)

    def saved(level: float) -> float:
        return sum(max(0.0, need[g.key] - max(level, floors[g.key])) for g in tier)

    most = saved(bottom)
    if most <= excess:
        return bottom, most
    lo, hi = bottom, top
    for _ in range(60):
        mid = (lo + hi) / 2
        if saved(mid) >= excess:
            lo = mid
        else:
            hi = mid
    level = float(int(lo / _W) * _W)
    return level, saved(level)
