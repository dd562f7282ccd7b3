"""Where packing and power decisions enter the cluster simulator: two small Protocols and the views they see.

Both are optional. Without a packing policy every new replica is bound at once (an unbounded GPU pool);
without a power policy every GPU runs uncapped. The simulator calls them at fixed points:

- `PackingPolicy.bind` when a replica is created and, while it stays pending, at every decision tick;
  GPU-seconds and the cold start begin only once it is bound. `release` when the replica is removed.
- `PowerPolicy.caps` at every decision tick with a view of each live replica; the returned per-GPU limits
  replace the replica's performance model (`perf_for_cap` in the config) from its next engine step on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ReplicaRequest:
    """A replica gang waiting to be placed."""

    replica_id: int
    service: str
    gpus: int  # GPUs the gang needs (tensor parallel x pipeline parallel)
    gpu_type: str
    requested_at: float


@dataclass(frozen=True)
class ReplicaView:
    """A live replica as the power policy sees it at a tick."""

    replica_id: int
    service: str
    node: str | None
    gpus: int
    state: str  # starting | ready | draining
    utilisation: float  # busy share of the last interval, 0..1
    power_limit_w: float | None  # per-GPU cap in force, None for uncapped


class PackingPolicy(Protocol):
    """Places replica gangs on nodes; a gang it cannot place yet stays pending."""

    def bind(self, request: ReplicaRequest, now: float) -> str | None:
        """The node to bind the gang to, or None to leave it pending for now."""
        ...

    def release(self, replica_id: int, now: float) -> None:
        """The gang's GPUs are free again."""
        ...


class PowerPolicy(Protocol):
    """Sets per-GPU power limits across the live replicas."""

    def caps(self, now: float, replicas: Sequence[ReplicaView]) -> Mapping[int, float | None]:
        """Per-GPU limit (watts) for each replica id to change; absent ids keep their limit, None uncaps."""
        ...
