"""Which operator replica may act: kopf's peering rule over the peering object's status (pure).

Every replica writes a claim (`priority`, `lifetime` in seconds, `lastseen`) under its identity in the status of
the shared (Cluster)KopfPeering object; kopf pauses a replica while another live claim has a higher priority, and
pauses every replica of a tie. The packer and the cache-fed triggers run outside kopf's handlers, so they apply
the same rule to the same object to act only where kopf's handlers would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controllers.planners.conditions import parse_rfc3339

DEFAULT_LIFETIME_S = 60.0  # kopf's default for a claim that states none


@dataclass(frozen=True)
class Claim:
    """One replica's keep-alive in the peering object."""

    identity: str
    priority: int
    lastseen_s: float
    lifetime_s: float

    def live(self, now: float) -> bool:
        return now < self.lastseen_s + self.lifetime_s


def claims(status: Mapping[str, Any], now: float) -> list[Claim]:
    """The claims in a peering object's status (a claim without `lastseen` counts as seen now, as kopf reads it)."""
    out = []
    for identity, raw in sorted(status.items()):
        if not isinstance(raw, Mapping):
            continue
        lastseen = parse_rfc3339(raw.get("lastseen"))
        out.append(
            Claim(
                identity,
                int(raw.get("priority", 0)),
                now if lastseen is None else lastseen,
                float(raw.get("lifetime", DEFAULT_LIFETIME_S)),
            )
        )
    return out


def is_active(status: Mapping[str, Any], identity: str, priority: int, now: float) -> bool:
    """Whether the replica `identity` with `priority` is the active one: no other live claim is as high."""
    return not any(c.identity != identity and c.live(now) and c.priority >= priority for c in claims(status, now))
