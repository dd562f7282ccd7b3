"""What the planners see of pods: a small typed view built from the API server's pod objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crds import labels as L
from crds.reasons import ConditionType, Reason


@dataclass(frozen=True)
class PodView:
    """One pod as the planners need it."""

    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool
    deleting: bool
    node: str | None
    unschedulable: str | None  # the scheduler's message when PodScheduled=False/Unschedulable
    ip: str | None = None
    message: str | None = None  # the first container's termination message (why it exited)

    @property
    def replica(self) -> int:
        return int(self.labels.get(L.REPLICA, "-1"))

    @property
    def attempt(self) -> int:
        return int(self.labels.get(L.ATTEMPT, "0"))

    @property
    def rank(self) -> int:
        return int(self.labels.get(L.RANK, "0"))

    @property
    def draining_since(self) -> float | None:
        raw = self.annotations.get(L.DRAIN_STARTED)
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None


def pod_view(obj: dict[str, Any]) -> PodView:
    """Build a PodView from a pod as returned by the API (camelCase dict)."""
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == ConditionType.READY and c.get("status") == "True" for c in conditions)
    unsched = next(
        (
            c.get("message") or "unschedulable"
            for c in conditions
            if c.get("type") == ConditionType.POD_SCHEDULED
            and c.get("status") == "False"
            and c.get("reason") == Reason.UNSCHEDULABLE
        ),
        None,
    )
    return PodView(
        name=meta.get("name", ""),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        phase=status.get("phase") or "Pending",
        ready=ready,
        deleting=meta.get("deletionTimestamp") is not None,
        node=(obj.get("spec") or {}).get("nodeName"),
        unschedulable=unsched,
        ip=status.get("podIP"),
        message=next(
            (
                ((c.get("state") or {}).get("terminated") or {}).get("message")
                for c in status.get("containerStatuses") or []
            ),
            None,
        ),
    )
