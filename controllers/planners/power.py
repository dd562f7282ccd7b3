"""The power manager's translation layer (pure): cluster views -> the power core's GPUs and domains, and the
core's plan -> PowerBudget status, Events, node cap annotations and LLMService power caps.

The shell (`controllers/shells/power.py`) scrapes DCGM and reads the caches; everything it decides is here or in
`autoscaler/power.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoscaler.capacity import EngineProfile
from autoscaler.power import Domain, DomainPlan, DomainState, GPUKey, GPUState, PowerPlan
from autoscaler.types import SLO, ServiceObservation
from catalogue.gpus import GPU_PRODUCT_LABEL, GPU_PROFILES
from controllers.planners.conditions import set_condition
from crds.powerbudget import PowerBudget
from crds.reasons import ConditionType, EventType, Reason

STATE_CONDITIONS = {
    DomainState.WITHIN_BUDGET: (ConditionType.WITHIN_BUDGET, Reason.WITHIN_BUDGET),
    DomainState.CAPPING: (ConditionType.CAPPING, Reason.CAPPING),
    DomainState.BUDGET_EXCEEDED: (ConditionType.BUDGET_EXCEEDED, Reason.BUDGET_EXCEEDED),
    DomainState.INFEASIBLE: (ConditionType.INFEASIBLE, Reason.INFEASIBLE),
}
POWER_CONDITIONS = frozenset(t for t, _ in STATE_CONDITIONS.values())


@dataclass(frozen=True)
class GPUSample:
    """One GPU's DCGM reading: draw, the limit in force, and the pod holding it (if any)."""

    index: int
    draw_w: float
    limit_w: float
    pod: tuple[str, str] | None = None  # (namespace, name)


@dataclass(frozen=True)
class NodeGPUs:
    """A GPU node as the power manager sees it."""

    name: str
    labels: Mapping[str, str]
    gpus: int


@dataclass(frozen=True)
class Workload:
    """What the power core needs to know about the pod on a GPU."""

    service: str  # "namespace/name" of the LLMService or FineTuneJob
    priority: int = 0
    slo_slack: float = 1.0
    prefill_share: float = 0.5
    demand_ratio: float = 1.0  # forecast demand over the lead time / demand now


def workload_of(
    service: str,
    priority: int,
    observed: ServiceObservation | None,
    slo: SLO | None,
    profile: EngineProfile | None,
    forecast_rps: float | None,
) -> Workload:
    """A service's power-relevant facts: SLO slack from its latest latencies, prefill share of its GPU time from its
    token rates over what one replica sustains, and the demand ratio its forecast implies."""
    if observed is None:
        return Workload(service, priority)
    slack = 1.0
    if slo is not None:
        ratios = [
            v / target
            for v, target in ((observed.ttft_p95_s, slo.ttft_s), (observed.itl_p95_s, slo.itl_s))
            if v is not None and target
        ]
        if ratios:
            slack = 1.0 - max(ratios)
    share = 0.5
    if profile is not None and profile.prompt_token_rate and profile.generation_token_rate:
        prefill = observed.prompt_token_rate / profile.prompt_token_rate
        decode = observed.generation_token_rate / profile.generation_token_rate
        if prefill + decode > 0:
            share = prefill / (prefill + decode)
    ratio = 1.0
    if forecast_rps is not None:
        ratio = forecast_rps / observed.request_rate if observed.request_rate > 0 else (2.0 if forecast_rps else 1.0)
    return Workload(service, priority, slack, share, max(0.0, ratio))


def gpu_states(
    nodes: Sequence[NodeGPUs],
    samples: Mapping[str, Sequence[GPUSample]],
    workloads: Mapping[tuple[str, str], Workload],
) -> list[GPUState]:
    """Every GPU of every known-product node with a DCGM reading, its workload and its forecast draw."""
    out: list[GPUState] = []
    for node in nodes:
        gpu = GPU_PROFILES.get(node.labels.get(GPU_PRODUCT_LABEL, ""))
        if gpu is None:
            continue
        for s in samples.get(node.name, ()):
            work = workloads.get(s.pod) if s.pod else None
            limit = None if s.limit_w >= gpu.tdp_w else s.limit_w
            if work is None:
                out.append(GPUState(node.name, s.index, gpu.tdp_w, gpu.min_power_limit_w, gpu.idle_w, s.draw_w, limit))
                continue
            # Forecast draw: the measured activity (draw on the board's power curve) scaled by the demand forecast.
            activity = max(0.0, (s.draw_w - gpu.idle_w) / (gpu.tdp_w - gpu.idle_w))
            if limit is not None and s.draw_w >= 0.97 * limit:
                activity = 1.0  # a binding cap hides the demand: assume the GPU would run flat out
            forecast = gpu.idle_w + (gpu.tdp_w - gpu.idle_w) * min(1.0, activity * work.demand_ratio)
            out.append(
                GPUState(
                    node.name,
                    s.index,
                    gpu.tdp_w,
                    gpu.min_power_limit_w,
                    gpu.idle_w,
                    s.draw_w,
                    limit,
                    forecast,
                    work.service,
                    work.priority,
                    work.slo_slack,
                    work.prefill_share,
                )
            )
    return out


def domains(budgets: Sequence[PowerBudget], nodes: Sequence[NodeGPUs]) -> list[Domain]:
    """The power core's domain of every PowerBudget: its budget, policy and the GPUs of the nodes it selects."""
    out = []
    for pb in budgets:
        sel = pb.spec.node_selector
        members = tuple(
            (n.name, i)
            for n in sorted(nodes, key=lambda n: n.name)
            if n.gpus > 0 and all(n.labels.get(k) == v for k, v in sel.items())
            for i in range(n.gpus)
        )
        p = pb.spec.policy
        out.append(
            Domain(
                pb.metadata.name,
                pb.spec.budget_watts,
                members,
                p.order,
                p.floor_watts_per_gpu,
                p.hysteresis_percent,
                p.exempt_priority_above,
            )
        )
    return out


def caps_by_node(caps: Mapping[GPUKey, float | None]) -> dict[str, dict[str, float]]:
    """node -> GPU index -> watts of the GPUs that are capped."""
    out: dict[str, dict[str, float]] = {}
    for (node, index), cap in sorted(caps.items()):
        if cap is not None:
            out.setdefault(node, {})[str(index)] = cap
    return out


def node_annotations(plan: PowerPlan, gpus: Sequence[GPUState]) -> dict[str, dict[int, float | None]]:
    """The caps annotation of every node with a GPU whose cap moves (the whole node's caps, so it is complete)."""
    moved = {node for node, _ in plan.changed(gpus)}
    out: dict[str, dict[int, float | None]] = {}
    for g in gpus:
        if g.node in moved:
            out.setdefault(g.node, {})[g.index] = plan.caps.get(g.key)
    return out


def service_caps(plan: PowerPlan, gpus: Sequence[GPUState]) -> dict[str, float | None]:
    """Each service's lowest per-GPU cap in force (None when none of its GPUs is capped)."""
    out: dict[str, float | None] = {}
    for g in gpus:
        if g.workload is None:
            continue
        cap = plan.caps.get(g.key)
        prev = out.get(g.workload)
        out[g.workload] = cap if prev is None else (prev if cap is None else min(prev, cap))
    return out


def budget_status(
    previous: Mapping[str, Any], d: DomainPlan, now: float, generation: int | None
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """The PowerBudget status fields the power manager owns, and the Events of this tick."""
    conditions: list[dict[str, Any]] = [c for c in previous.get("conditions", []) if c.get("type") in POWER_CONDITIONS]
    was = next((c.get("reason") for c in conditions if c.get("status") == "True"), None)
    _, reason = STATE_CONDITIONS[d.state]
    for state, (ctype, _r) in STATE_CONDITIONS.items():
        conditions = set_condition(conditions, ctype, state is d.state, reason, d.message, now, generation)
    events: list[tuple[str, str, str]] = []
    if was != reason:
        warn = d.state in (DomainState.BUDGET_EXCEEDED, DomainState.INFEASIBLE)
        events.append((EventType.WARNING if warn else EventType.NORMAL, reason, d.message))
    caps = caps_by_node(d.caps)
    old_caps: Mapping[str, Mapping[str, float]] = previous.get("caps") or {}
    if caps != old_caps:
        events.append((EventType.NORMAL, Reason.CAPS_CHANGED, _cap_moves(old_caps, caps)))
    if d.overlaps and was is None:
        events.append((EventType.NORMAL, Reason.OVERLAPPING_DOMAINS, d.message))
    status = {
        "drawnWatts": round(d.drawn_w, 1),
        "forecastWatts": round(d.forecast_w, 1),
        "demandWatts": round(d.demand_w, 1),
        "headroomWatts": round(d.headroom_w, 1),
        "secondsOverBudget": round(d.seconds_over, 1),
        "conditions": conditions,
    }
    if caps:
        # Left out when empty: under server-side apply an absent field this manager owned is removed.
        status["caps"] = caps
    return status, events


def _cap_moves(old: Mapping[str, Mapping[str, float]], new: Mapping[str, Mapping[str, float]]) -> str:
    moves = []
    for node in sorted(set(old) | set(new)):
        a, b = old.get(node, {}), new.get(node, {})
        for gpu in sorted(set(a) | set(b), key=int):
            if a.get(gpu) != b.get(gpu):
                before = f"{a[gpu]:.0f} W" if gpu in a else "default"
                after = f"{b[gpu]:.0f} W" if gpu in b else "default"
                moves.append(f"{node}/{gpu} {before} -> {after}")
    shown = moves[:20]
    more = f" and {len(moves) - 20} more" if len(moves) > 20 else ""
    return "caps moved: " + ", ".join(shown) + more
