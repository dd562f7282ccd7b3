"""Rolling updates: when an LLMService's pod template changes, its gangs are replaced one at a time, drain first.

A gang whose pods carry another `ebbtide.dev/template-hash` than the spec's was built from an older template. The
roll drains one such gang the way scale-in does (out of routing, then the engine's own drain, see drain.py), and
the reconciler creates its replacement from the current template at once; the next gang goes only when nothing is
draining and every gang of the current template is Ready.

Drain first, not surge first: a roll then needs no spare GPUs. A whole spare gang (up to a multi-node replica) is
rarely free on a GPU cluster, and a surged gang that never fits would hold the roll forever; the price is one
gang's capacity while its replacement starts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from controllers.planners.snapshot import PodView
from crds import labels as L


def outdated(gangs: Mapping[int, list[PodView]], template: str) -> set[int]:
    """The gangs with a member built from another pod template than `template`."""
    return {r for r, pods in gangs.items() if any(p.labels.get(L.TEMPLATE_HASH) != template for p in pods)}


def scale_in_order(active: Collection[int], stale: Collection[int]) -> list[int]:
    """The order in which scale-in drains gangs: outdated ones first (they would be replaced anyway), then the
    newest first, so the longest-serving gangs stay."""
    return sorted(active, key=lambda r: (r not in stale, -r))


def next_to_replace(
    active: Collection[int], stale: Collection[int], ready: Collection[int], draining: bool, desired: int
) -> int | None:
    """The outdated gang to drain now, if the roll may take its next step: the service has its desired size, no
    gang is draining, and every gang of the current template is Ready. Outdated gangs that are not Ready go first
    (they serve nothing), then the newest."""
    if draining or len(active) != desired or not any(r in stale for r in active):
        return None
    if any(r not in ready for r in active if r not in stale):
        return None
    return min((r for r in active if r in stale), key=lambda r: (r in ready, -r))
