"""The discrete-event cluster simulator: one service's replicas, its scaling loop and virtual time.

Engine model: `FastReplica` (continuous batching in closed form between events, derived from PerfModel and
validated against the engine's `BatchScheduler`, which `SteppedReplica` drives step by step).
"""

from simulator.cluster.records import LogCapacityError, OutcomeAccumulator, RequestLog
from simulator.cluster.replica import CachedStepCost, FastReplica, IntervalStats, ReplicaModel, StepCost
from simulator.cluster.seams import PackingPolicy, PowerPolicy, ReplicaRequest, ReplicaView
from simulator.cluster.simulator import ClusterConfig, ClusterSimulator, ReplicaRecord, SimResult, SimTick
from simulator.cluster.stepped import SteppedReplica

__all__ = [
    "CachedStepCost",
    "ClusterConfig",
    "ClusterSimulator",
    "FastReplica",
    "IntervalStats",
    "LogCapacityError",
    "OutcomeAccumulator",
    "PackingPolicy",
    "PowerPolicy",
    "ReplicaModel",
    "ReplicaRecord",
    "ReplicaRequest",
    "ReplicaView",
    "RequestLog",
    "SimResult",
    "SimTick",
    "StepCost",
    "SteppedReplica",
]
