"""Typed snapshots the packer decides over: nodes, running gangs, pending gangs, service budgets.

The Kubernetes shell (or the simulator) builds a `ClusterSnapshot` from API objects; the packer never mutates it.
Node free resources already exclude every running pod. GPU amounts are in milli-GPUs (1000 = one whole GPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

GPU_MILLI = 1000  # one whole GPU


class TaintEffect(StrEnum):
    """Kubernetes taint effects; PreferNoSchedule never blocks placement."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


@dataclass(frozen=True)
class Taint:
    """A node taint (key=value:effect)."""

    key: str
    value: str = ""
    effect: TaintEffect = TaintEffect.NO_SCHEDULE


@dataclass(frozen=True)
class Toleration:
    """A pod toleration with Kubernetes semantics (empty key + Exists tolerates everything)."""

    key: str = ""
    operator: str = "Equal"  # Equal | Exists
    value: str = ""
    effect: TaintEffect | None = None  # None tolerates every effect

    def __post_init__(self) -> None:
        if self.operator not in ("Equal", "Exists"):
            raise ValueError(f"toleration operator must be Equal or Exists, got {self.operator!r}")
        if self.operator == "Exists" and self.value:
            raise ValueError("toleration with operator Exists must not set a value")

    def tolerates(self, taint: Taint) -> bool:
        """Whether this toleration covers `taint`."""
        if self.effect is not None and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return self.key in ("", taint.key)
        return self.key == taint.key and self.value == taint.value


@dataclass(frozen=True)
class LabelRequirement:
    """One required node-affinity term: the node's label `key` must be one of `values` (any value if empty)."""

    key: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with `labels` satisfies this requirement."""
        if self.key not in labels:
            return False
        return not self.values or labels[self.key] in self.values


@dataclass
class Node:
    """One schedulable node as the packer sees it: identity, constraints and free resources."""

    name: str
    gpu_free_milli: list[int]  # one entry per GPU, 0..1000; the list length is the node's GPU count
    cpu_free_milli: int
    mem_free_mib: int
    cpu_capacity_milli: int
    mem_capacity_mib: int
    gpu_product: str = ""  # nvidia.com/gpu.product; empty on CPU-only nodes
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()

    def __post_init__(self) -> None:
        if any(not 0 <= g <= GPU_MILLI for g in self.gpu_free_milli):
            raise ValueError(f"node {self.name}: gpu_free_milli entries must be within 0..{GPU_MILLI}")
        if self.cpu_free_milli > self.cpu_capacity_milli or self.mem_free_mib > self.mem_capacity_mib:
            raise ValueError(f"node {self.name}: free CPU/memory exceeds capacity")

    @property
    def gpu_count(self) -> int:
        """Number of physical GPUs on the node."""
        return len(self.gpu_free_milli)


@dataclass(frozen=True)
class PodRequest:
    """Resources one pod asks for. A share (gpu_milli < 1000) is only valid with exactly one GPU."""

    name: str
    cpu_milli: int = 0
    mem_mib: int = 0
    gpu_count: int = 0
    gpu_milli: int = GPU_MILLI  # per GPU

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.mem_mib < 0 or self.gpu_count < 0:
            raise ValueError(f"pod {self.name}: requests must be non-negative")
        if not 0 < self.gpu_milli <= GPU_MILLI:
            raise ValueError(f"pod {self.name}: gpu_milli must be within 1..{GPU_MILLI}")
        if self.gpu_milli < GPU_MILLI and self.gpu_count != 1:
            raise ValueError(f"pod {self.name}: a GPU share (gpu_milli < 1000) needs gpu_count == 1")

    @property
    def gpu_total_milli(self) -> int:
        """All GPU the pod takes, in milli-GPUs."""
        return self.gpu_count * self.gpu_milli if self.gpu_count else 0

    @property
    def is_share(self) -> bool:
        """Whether the pod takes a fraction of one GPU."""
        return self.gpu_count == 1 and self.gpu_milli < GPU_MILLI


class GangKind(StrEnum):
    """What a gang is; decides how eviction costs and safety rules apply."""

    SERVING = "serving"  # one replica of an LLMService
    FINETUNE = "finetune"  # one FineTuneJob
    OTHER = "other"


@dataclass(frozen=True)
class Gang:
    """A pending gang: all of its pods are placed together or none is."""

    uid: str
    pods: tuple[PodRequest, ...]
    priority: int = 0  # PriorityClass value
    kind: GangKind = GangKind.OTHER
    gpu_products: frozenset[str] = frozenset()  # allowed nvidia.com/gpu.product values; empty = any
    affinity: tuple[LabelRequirement, ...] = ()  # node selector + required node affinity, all must hold
    tolerations: tuple[Toleration, ...] = ()
    topology_key: str = ""  # when set, a multi-pod gang lands within one value of this node label
    created_s: float = 0.0  # creation time on the caller's clock, for FIFO within a priority
    service: str = ""  # owning LLMService for serving replicas

    def __post_init__(self) -> None:
        if not self.pods:
            raise ValueError(f"gang {self.uid}: needs at least one pod")
        names = [p.name for p in self.pods]
        if len(set(names)) != len(names):
            raise ValueError(f"gang {self.uid}: pod names must be unique")

    @property
    def gpu_total_milli(self) -> int:
        """All GPU the gang asks for, in milli-GPUs."""
        return sum(p.gpu_total_milli for p in self.pods)


@dataclass(frozen=True)
class Placement:
    """Where one pod runs: a node and the GPU indices it holds there."""

    pod: str
    node: str
    gpu_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class RunningGang:
    """A gang already bound to nodes."""

    uid: str
    pods: tuple[PodRequest, ...]
    placements: tuple[Placement, ...]  # one per pod, same order
    priority: int = 0
    kind: GangKind = GangKind.OTHER
    preemptible: bool = False  # FineTuneJob.spec.preemptible; serving replicas are governed by their service
    movable: bool = False  # may be restarted elsewhere by a repacking plan
    started_s: float = 0.0
    last_checkpoint_s: float | None = None  # fine-tuning only
    service: str = ""  # owning LLMService for serving replicas
    terminating: bool = False  # already being evicted; never chosen again
    gpu_products: frozenset[str] = frozenset()  # where a move may take it (same meaning as on Gang)
    affinity: tuple[LabelRequirement, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    topology_key: str = ""

    def __post_init__(self) -> None:
        if len(self.pods) != len(self.placements):
            raise ValueError(f"running gang {self.uid}: one placement per pod")
        for pod, pl in zip(self.pods, self.placements, strict=True):
            if pod.name != pl.pod:
                raise ValueError(f"running gang {self.uid}: placement {pl.pod} does not match pod {pod.name}")
            want = pod.gpu_count
            if len(pl.gpu_indices) != want:
                raise ValueError(f"running gang {self.uid}: pod {pod.name} holds {want} GPU indices")

    @property
    def gpu_total_milli(self) -> int:
        """All GPU the gang holds, in milli-GPUs."""
        return sum(p.gpu_total_milli for p in self.pods)


@dataclass(frozen=True)
class ServiceBudget:
    """How many replicas of one LLMService may be disrupted right now."""

    name: str
    min_replicas: int
    ready_replicas: int
    pdb_disruptions_allowed: int

    @property
    def allowed(self) -> int:
        """Replicas that may go: the PDB allowance, never taking the service below minReplicas."""
        return max(0, min(self.pdb_disruptions_allowed, self.ready_replicas - self.min_replicas))


@dataclass
class ClusterSnapshot:
    """Everything one decision needs. The packer reads it and never changes it."""

    nodes: list[Node]
    running: list[RunningGang] = field(default_factory=list)
    pending: list[Gang] = field(default_factory=list)
    services: dict[str, ServiceBudget] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        known = set(names)
        for gang in self.running:
            for pl in gang.placements:
                if pl.node not in known:
                    raise ValueError(f"running gang {gang.uid}: unknown node {pl.node}")

    def fingerprint(self) -> tuple[object, ...]:
        """A deep, hashable copy of the state, for checks that a what-if left the snapshot untouched."""
        nodes = tuple(
            (
                n.name,
                tuple(n.gpu_free_milli),
                n.cpu_free_milli,
                n.mem_free_mib,
                n.cpu_capacity_milli,
                n.mem_capacity_mib,
                n.gpu_product,
                tuple(sorted(n.labels.items())),
                n.taints,
            )
            for n in self.nodes
        )
        services = tuple(sorted(self.services.items()))
        return (nodes, tuple(self.running), tuple(self.pending), services)
