"""Kubernetes-style conditions and status writes: set a condition (keeping lastTransitionTime unless the status
really changed), the status of an object the API types reject, and whether a writer's status is already in place."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from crds.reasons import ConditionType, EventType, Reason


def rfc3339(epoch: float) -> str:
    """Epoch seconds as the API server writes timestamps."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    now: float,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new conditions list with `type_` set; other conditions are kept as they were."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = [dict(c) for c in conditions if c.get("type") != type_]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != value
    cond: dict[str, Any] = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(now)
        if changed or previous is None
        else previous.get("lastTransitionTime", rfc3339(now)),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    return sorted(out, key=lambda c: str(c["type"]))


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    """The condition of that type, if any."""
    return next((c for c in conditions if c.get("type") == type_), None)


def report_problem(
    conditions: list[dict[str, Any]], reason: str, message: str, now: float, generation: int | None
) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """Ready=False with the problem's reason, and a Warning Event only when the reason is new (no Event storms)."""
    previous = get_condition(conditions, ConditionType.READY)
    new = previous is None or previous.get("reason") != reason
    events: list[tuple[str, str, str]] = [(EventType.WARNING, reason, message)] if new else []
    return set_condition(conditions, ConditionType.READY, False, reason, message, now, generation), events


def parse_rfc3339(raw: str | None) -> float | None:
    """Epoch seconds of an API timestamp, None when absent or malformed."""
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def invalid_spec_status(
    conditions: list[dict[str, Any]], message: str, now: float, generation: int | None
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """(status, events) of an object the API types reject (e.g. stored before a schema change): phase Failed and
    Ready=False InvalidSpec, with a Warning only when the reason is new. Only Ready is written, so the writer's
    other conditions go: nothing else it said of the object holds while the spec cannot be read."""
    ready = [c for c in conditions if c.get("type") == ConditionType.READY]
    conds, events = report_problem(ready, Reason.INVALID_SPEC, message, now, generation)
    return {"phase": "Failed", "conditions": conds}, events


def already_applied(current: Mapping[str, Any], owned: Mapping[str, Any]) -> bool:
    """Whether `current` status already holds every field a writer would apply (its conditions compared by type),
    so the write can be skipped. A field the writer stops sending is not detected: writers send all they own."""
    have = {c.get("type"): c for c in current.get("conditions") or []}
    for key, value in owned.items():
        if key == "conditions":
            if any(have.get(c.get("type")) != c for c in value):
                return False
        elif current.get(key) != value:
            return False
    return True
