"""Drain timing: when a draining gang may be deleted, and the engine flags and pod grace period that make the
deletion itself the drain.

Scale-in and rolling updates drain a gang the same way, with nothing but what real engines support
(docs/engines.md). The shell takes the gang out of routing first: it drops the pods' entrypoint label, so the
Service stops selecting them, and stamps `ebbtide.dev/drain-started`, which gateways honour. The engines keep
serving whatever still arrives while routers let go (`deregistration_s`); then the gang is deleted. Deletion sends
SIGTERM, and an engine started with `--shutdown-timeout` = the service's drain grace finishes its in-flight requests
(refusing new ones) before it exits; the pod's termination grace period covers that plus the engine's teardown, so
the kubelet's SIGKILL never cuts a drain short. Pure: time is the caller's `now`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from controllers.planners.snapshot import PodView

# vLLM 0.32.0 keeps its HTTP server up for 6-13 s after the last request finishes, and exits at about
# min(work left + 13 s, shutdown timeout + 6 s) after SIGTERM (measured, docs/engines.md): allow 15 s on top.
TEARDOWN_MARGIN_S = 15


@dataclass(frozen=True)
class DrainingGang:
    """One gang being drained: taken out of routing at `started`, deletable once routers have let go."""

    replica: int
    started: float
    deletable: bool


def draining_gangs(pods: list[PodView], now: float, deregistration_s: float) -> list[DrainingGang]:
    """Every gang with a drain under way and pods not yet deleted, by replica index; a gang's drain began when
    its first member was marked, and it may be deleted `deregistration_s` later."""
    members: dict[int, list[PodView]] = defaultdict(list)
    for p in pods:
        if p.draining_since is not None and not p.deleting:
            members[p.replica].append(p)
    out = []
    for replica, ps in sorted(members.items()):
        started = min(p.draining_since for p in ps if p.draining_since is not None)
        out.append(DrainingGang(replica, started, now - started >= deregistration_s))
    return out


def shutdown_timeout_s(grace_s: int) -> int:
    """The engine's `--shutdown-timeout`: the service's drain grace, the longest a request in flight may take."""
    return max(0, grace_s)


def termination_grace_s(grace_s: int) -> int:
    """The pod's `terminationGracePeriodSeconds`: the engine's shutdown timeout plus its teardown."""
    return shutdown_timeout_s(grace_s) + TEARDOWN_MARGIN_S
