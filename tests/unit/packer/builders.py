"""Builders for packer test clusters and helpers that check a plan against the cluster it was made for."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from packer import (
    ClusterSnapshot,
    Gang,
    GangKind,
    LabelRequirement,
    Node,
    Placement,
    Plan,
    PodRequest,
    RunningGang,
    ServiceBudget,
    Taint,
    Toleration,
    Verdict,
)

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
RACK = "topology.ebbtide.dev/rack"


def pod(name: str, gpus: int = 1, milli: int = 1000, cpu: int = 1000, mem: int = 1024) -> PodRequest:
    """A pod asking for `gpus` GPUs (or a `milli` share of one)."""
    return PodRequest(name, cpu_milli=cpu, mem_mib=mem, gpu_count=gpus, gpu_milli=milli)


def gang(
    uid: str,
    *pods: PodRequest,
    priority: int = 0,
    products: tuple[str, ...] = (),
    affinity: dict[str, tuple[str, ...]] | None = None,
    tolerations: tuple[Toleration, ...] = (),
    topology: str = "",
    created: float = 0.0,
) -> Gang:
    """A pending gang (one 1-GPU pod when no pods are given)."""
    return Gang(
        uid,
        pods or (pod(f"{uid}-0"),),
        priority=priority,
        gpu_products=frozenset(products),
        affinity=tuple(LabelRequirement(k, frozenset(v)) for k, v in (affinity or {}).items()),
        tolerations=tolerations,
        topology_key=topology,
        created_s=created,
    )


@dataclass
class ClusterBuilder:
    """A fluent cluster: nodes, running gangs that occupy them, pending gangs, service budgets."""

    nodes: dict[str, Node] = field(default_factory=dict)
    running: list[RunningGang] = field(default_factory=list)
    pending: list[Gang] = field(default_factory=list)
    services: dict[str, ServiceBudget] = field(default_factory=dict)

    def node(
        self,
        name: str,
        gpus: int = 8,
        product: str = H100,
        cpu: int = 64000,
        mem: int = 512 * 1024,
        labels: dict[str, str] | None = None,
        taints: tuple[Taint, ...] = (),
    ) -> ClusterBuilder:
        """Add an empty node."""
        self.nodes[name] = Node(name, [1000] * gpus, cpu, mem, cpu, mem, product, dict(labels or {}), taints)
        return self

    def run(
        self,
        uid: str,
        *where: str,
        gpus: int = 8,
        milli: int = 1000,
        priority: int = 0,
        kind: GangKind = GangKind.FINETUNE,
        preemptible: bool = True,
        checkpoint: float | None = None,
        service: str = "",
        cpu: int = 1000,
        mem: int = 1024,
    ) -> ClusterBuilder:
        """A running gang with one pod on each node in `where`, taking the lowest-index GPUs with room."""
        pods, placements = [], []
        for i, node_name in enumerate(where):
            n = self.nodes[node_name]
            p = PodRequest(f"{uid}-{i}", cpu, mem, gpus, milli)
            idx = [g for g, free in enumerate(n.gpu_free_milli) if free >= milli][:gpus]
            assert len(idx) == gpus, f"{node_name} has no room for {uid}"
            for g in idx:
                n.gpu_free_milli[g] -= milli
            n.cpu_free_milli -= cpu
            n.mem_free_mib -= mem
            pods.append(p)
            placements.append(Placement(p.name, node_name, tuple(idx)))
        self.running.append(
            RunningGang(
                uid,
                tuple(pods),
                tuple(placements),
                priority=priority,
                kind=kind,
                preemptible=preemptible,
                last_checkpoint_s=checkpoint,
                service=service,
            )
        )
        return self

    def pend(self, *gangs: Gang) -> ClusterBuilder:
        """Add pending gangs."""
        self.pending.extend(gangs)
        return self

    def service(self, name: str, min_replicas: int, ready: int, pdb_allowed: int) -> ClusterBuilder:
        """Add a service disruption budget."""
        self.services[name] = ServiceBudget(name, min_replicas, ready, pdb_allowed)
        return self

    def build(self) -> ClusterSnapshot:
        """The snapshot (nodes listed in insertion order)."""
        return ClusterSnapshot(list(self.nodes.values()), list(self.running), list(self.pending), dict(self.services))


def expect_applicable(snapshot: ClusterSnapshot, plan: Plan) -> None:
    """Apply the plan (evictions first, then every binding) and check nothing is over-committed."""
    free = {n.name: list(n.gpu_free_milli) for n in snapshot.nodes}
    cpu = {n.name: n.cpu_free_milli for n in snapshot.nodes}
    evicted = {e.gang for e in plan.evictions}
    for g in snapshot.running:
        if g.uid in evicted:
            for p, pl in zip(g.pods, g.placements, strict=True):
                for i in pl.gpu_indices:
                    free[pl.node][i] += p.gpu_milli
                cpu[pl.node] += p.cpu_milli
    pods = {(g.uid, p.name): p for g in snapshot.pending for p in g.pods}
    for b in plan.bindings:
        p = pods[(b.gang, b.pod)]
        assert len(b.gpu_indices) == p.gpu_count, f"{b.pod} got {b.gpu_indices}"
        for i in b.gpu_indices:
            free[b.node][i] -= p.gpu_milli
            assert free[b.node][i] >= 0, f"GPU {i} on {b.node} over-committed"
        cpu[b.node] -= p.cpu_milli
        assert cpu[b.node] >= 0, f"CPU on {b.node} over-committed"


def expect_whole_gangs(snapshot: ClusterSnapshot, plan: Plan) -> None:
    """Every pending gang is bound completely or not at all."""
    bound: dict[str, set[str]] = defaultdict(set)
    for b in plan.bindings:
        bound[b.gang].add(b.pod)
    for g in snapshot.pending:
        d = plan.decision(g.uid)
        if d.verdict in (Verdict.BOUND, Verdict.NOMINATED):
            assert bound[g.uid] == {p.name for p in g.pods}, f"gang {g.uid} partially bound"
        else:
            assert not bound[g.uid], f"gang {g.uid} has bindings but verdict {d.verdict}"
