"""PowerBudget reporting: which nodes and GPUs a budget covers, their peak draw, and the oversubscription."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from catalogue.gpus import GPU_PRODUCT_LABEL, GPU_PROFILES
from controllers.planners.conditions import set_condition
from crds.powerbudget import PowerBudget
from crds.reasons import ConditionType, EventType, Reason


@dataclass(frozen=True)
class NodeView:
    """A node as the power report needs it."""

    name: str
    labels: dict[str, str]
    gpus: int


def report(pb: PowerBudget, nodes: list[NodeView], now: float) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """(status, events) of one PowerBudget."""
    sel = pb.spec.node_selector
    matched = [n for n in nodes if n.gpus > 0 and all(n.labels.get(k) == v for k, v in sel.items())]
    # Only the reconciler's own fields: drawn/forecast/headroom/caps and the four power conditions belong to the
    # power manager (controllers/shells/power.py), which applies them as its own field manager.
    st: dict[str, Any] = {}
    own = pb.status.model_dump(by_alias=True, exclude_none=True, mode="json").get("conditions", [])
    conditions: list[dict[str, Any]] = [c for c in own if c.get("type") == ConditionType.READY]
    gen = pb.metadata.generation
    events: list[tuple[str, str, str]] = []
    unknown = sorted({n.labels.get(GPU_PRODUCT_LABEL, "?") for n in matched} - set(GPU_PROFILES))
    peak = sum(
        n.gpus * GPU_PROFILES[n.labels[GPU_PRODUCT_LABEL]].tdp_w
        for n in matched
        if n.labels.get(GPU_PRODUCT_LABEL) in GPU_PROFILES
    )
    gpus = sum(n.gpus for n in matched)
    previous = next((c for c in conditions if c["type"] == ConditionType.READY), None)
    if not matched:
        reason, ok, msg = Reason.NO_NODES_MATCHED, False, f"spec.nodeSelector {sel} matches no GPU node"
    elif unknown:
        reason, ok, msg = Reason.UNKNOWN_GPU_TYPE, False, f"nodes carry unknown GPU product(s) {', '.join(unknown)}"
    else:
        reason, ok = Reason.REPORTED, True
        msg = f"{len(matched)} nodes, {gpus} GPUs, peak {peak:.0f} W for a budget of {pb.spec.budget_watts:.0f} W"
    if previous is None or previous.get("reason") != reason:
        events.append((EventType.NORMAL if ok else EventType.WARNING, reason, msg))
    conditions = set_condition(conditions, ConditionType.READY, ok, reason, msg, now, gen)
    st.update(
        nodes=len(matched),
        gpus=gpus,
        peakWatts=peak,
        oversubscription=round(peak / pb.spec.budget_watts, 3),
        observedGeneration=gen,
        conditions=conditions,
    )
    return st, events
