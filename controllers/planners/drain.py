"""Drain timing: when a draining gang's engines may be asked to stop, and when the gang may be deleted.

Scale-in and rolling updates drain a gang the same way. The shell takes it out of routing first (drops its
entrypoint label, so the Service stops selecting it, and stamps `ebbtide.dev/drain-started`, which gateways
honour). Routers need a moment to notice, so for `deregistration_s` the engines keep serving whatever still
arrives; then they are asked to stop admitting and to report in-flight work, and the gang is deleted once every
engine is idle, or `grace_s` after the drain began, whichever comes first. Pure: time is the caller's `now`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from controllers.planners.snapshot import PodView
from crds import labels as L


class DrainStage(StrEnum):
    """Where a draining gang stands."""

    DEREGISTERING = "Deregistering"  # routers are still letting go of it; its engines keep serving
    STOPPING = "Stopping"  # its engines are asked to stop admitting; waiting for in-flight requests
    EXPIRED = "Expired"  # the grace period is over: delete it whatever is still running


@dataclass(frozen=True)
class DrainTiming:
    """The two delays of a drain: routers' deregistration (an operator setting) and the service's grace period."""

    deregistration_s: float
    grace_s: float


@dataclass(frozen=True)
class DrainingGang:
    """One gang being drained, its stage, and the pods whose engines take requests (the ones asked to stop)."""

    replica: int
    started: float
    stage: DrainStage
    entry_pods: tuple[PodView, ...]


def drain_stage(started: float, now: float, timing: DrainTiming) -> DrainStage:
    """The stage of a drain that began at `started`; the grace period wins over the deregistration delay."""
    elapsed = now - started
    if elapsed >= timing.grace_s:
        return DrainStage.EXPIRED
    if elapsed < timing.deregistration_s:
        return DrainStage.DEREGISTERING
    return DrainStage.STOPPING


def draining_gangs(pods: list[PodView], now: float, timing: DrainTiming) -> list[DrainingGang]:
    """Every gang with a drain under way and pods not yet deleted, by replica index; a gang's drain began when
    its first member was marked."""
    members: dict[int, list[PodView]] = defaultdict(list)
    for p in pods:
        if p.draining_since is not None and not p.deleting:
            members[p.replica].append(p)
    out = []
    for replica, ps in sorted(members.items()):
        started = min(p.draining_since for p in ps if p.draining_since is not None)
        entry = tuple(p for p in ps if p.labels.get(L.ROLE) != "worker")  # workers serve through their leader
        out.append(DrainingGang(replica, started, drain_stage(started, now, timing), entry))
    return out


def may_delete(stage: DrainStage, engines_idle: bool) -> bool:
    """Whether a draining gang may be deleted: its engines, once asked to stop, report no in-flight work, or the
    grace period is over. An engine that is idle while routers still deregister may yet get a request."""
    return stage == DrainStage.EXPIRED or (stage == DrainStage.STOPPING and engines_idle)
