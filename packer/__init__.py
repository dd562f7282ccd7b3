"""Placement of GPU gangs: fragmentation-aware greedy packing, CP-SAT repacking, priority preemption, and MoE
expert layouts for elastic expert parallelism (`packer.experts`).

Every module here is a pure decision core: plain data in (a `ClusterSnapshot`), a `Plan` out. No Kubernetes,
network or wall-clock access; time arrives as the `now` argument and the solver budget as configuration. The
Kubernetes shell (binding, eviction, the checkpoint handshake) lives outside these modules and only applies plans.
"""

from packer.checkpoint import CheckpointAction, CheckpointDecision, CheckpointState, checkpoint_step
from packer.exact import ExactConfig
from packer.packer import Packer, PackerConfig
from packer.plan import (
    Binding,
    Eviction,
    GangDecision,
    Move,
    Plan,
    SolverReport,
    SolverStatus,
    Verdict,
)
from packer.preemption import CostModel
from packer.snapshot import (
    ClusterSnapshot,
    Gang,
    GangKind,
    LabelRequirement,
    Node,
    Placement,
    PodRequest,
    RunningGang,
    ServiceBudget,
    Taint,
    TaintEffect,
    Toleration,
)

__all__ = [
    "Binding",
    "CheckpointAction",
    "CheckpointDecision",
    "CheckpointState",
    "ClusterSnapshot",
    "CostModel",
    "Eviction",
    "ExactConfig",
    "Gang",
    "GangDecision",
    "GangKind",
    "LabelRequirement",
    "Move",
    "Node",
    "Packer",
    "PackerConfig",
    "Placement",
    "Plan",
    "PodRequest",
    "RunningGang",
    "ServiceBudget",
    "SolverReport",
    "SolverStatus",
    "Taint",
    "TaintEffect",
    "Toleration",
    "Verdict",
    "checkpoint_step",
]
