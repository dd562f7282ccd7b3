"""Whether this operator replica is the active peering leader, read from the watch-fed peering object.

kopf pauses its own handlers on a replica that is not the leader, but the packer and the cache-fed reconcile
triggers run beside kopf's handlers; they ask `Leadership.active()` before they act. The rule is kopf's
(controllers/planners/peering.py), applied to the same object kopf reads, so both agree on who leads.
"""

from __future__ import annotations

import getpass
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.cache import ClusterCache
from controllers.planners.peering import is_active


def own_identity() -> str:
    """This replica's peering identity: $POD_ID where set (kopf's convention), else user@host/pid/random."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    suffix = "".join(random.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=4))
    return f"{getpass.getuser()}@{socket.gethostname()}/{os.getpid()}/{suffix}"


@dataclass
class Leadership:
    """`peering` None means standalone: the only replica always leads."""

    cache: ClusterCache
    peering: str | None
    identity: str
    priority: int
    namespace: str | None = None
    clock: Callable[[], float] = field(default=time.time)

    def active(self) -> bool:
        if self.peering is None:
            return True
        obj = self.cache.peerings.get(f"{self.namespace}/{self.peering}" if self.namespace else self.peering)
        if obj is None:
            return False  # kopf, too, stays paused until its peering object exists
        return is_active(obj.get("status") or {}, self.identity, self.priority, self.clock())
