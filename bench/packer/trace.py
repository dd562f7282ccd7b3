"""The Alibaba GPU cluster trace (2023, the FGD paper's): nodes, pod lists, and Monte-Carlo arrival sequences."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, replace
from pathlib import Path

from packer.fragmentation import TargetWorkload, WorkloadShape
from packer.snapshot import GPU_MILLI, PodRequest
from simulator.traces import data_dir

TRACE_DIR = "alibaba-gpu-2023"
# The FGD authors replay onto the GPU nodes only (their prepare_input.sh copies the gpu_node list); the full list
# (with 310 CPU-only nodes) is the 1,523-node cluster used for the latency measurement.
NODE_FILES = {"gpu": "openb_node_list_gpu_node.csv", "all": "openb_node_list_all_node.csv"}


def data_root() -> Path:
    """The full public traces, `$EBBTIDE_DATA` (one rule for the whole project: `simulator.traces.data_dir`)."""
    return data_dir()


@dataclass(frozen=True)
class TraceNode:
    """One node of the trace cluster."""

    name: str
    cpu_milli: int
    mem_mib: int
    gpus: int
    model: str  # GPU model code, "" for CPU-only nodes


@dataclass(frozen=True)
class TracePod:
    """One pod of a trace pod list."""

    name: str
    request: PodRequest
    gpu_products: frozenset[str]  # allowed GPU models; empty = any

    def shape(self, memory: bool) -> WorkloadShape:
        """The pod's shape for a target workload (memory left out unless asked, as in the FGD paper)."""
        r = self.request
        milli = r.gpu_milli if r.gpu_count else 0
        return WorkloadShape(r.cpu_milli, r.mem_mib if memory else 0, r.gpu_count, milli, self.gpu_products)


def load_nodes(which: str = "gpu", root: Path | None = None) -> list[TraceNode]:
    """The trace's nodes: "gpu" (1,213 GPU nodes, 6,212 GPUs) or "all" (1,523 nodes)."""
    path = (root or data_root()) / TRACE_DIR / NODE_FILES[which]
    with path.open(newline="") as f:
        return [
            TraceNode(row["sn"], int(row["cpu_milli"]), int(row["memory_mib"]), int(row["gpu"]), row["model"] or "")
            for row in csv.DictReader(f)
        ]


def load_pods(variant: str, root: Path | None = None) -> list[TracePod]:
    """Pods of `openb_pod_list_<variant>.csv`."""
    path = (root or data_root()) / TRACE_DIR / f"openb_pod_list_{variant}.csv"
    pods = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            count = int(row["num_gpu"])
            milli = int(row["gpu_milli"]) if count else GPU_MILLI
            spec = row.get("gpu_spec") or ""
            req = PodRequest(row["name"], int(row["cpu_milli"]), int(row["memory_mib"]), count, milli)
            pods.append(TracePod(row["name"], req, frozenset(s for s in spec.split("|") if s)))
    return pods


def target_workload(pods: list[TracePod], memory: bool, popularity: float = 0.95) -> TargetWorkload:
    """FGD's typical pods for a pod list (CPU pods included, popularity threshold 95%, as the authors ran it)."""
    return TargetWorkload.from_samples((p.shape(memory) for p in pods), popularity)


def arrivals(pods: list[TracePod], capacity_milli: int, inflation: float, seed: int) -> list[TracePod]:
    """A Monte-Carlo arrival sequence: pods drawn with replacement until their GPU asks reach `inflation` x capacity.

    This follows the FGD evaluation (workload inflated to 130% of the cluster's GPUs, pods never leave), so every
    policy sees the same arrivals for a given seed.
    """
    rng = random.Random(seed)
    target = inflation * capacity_milli
    seq: list[TracePod] = []
    total = 0
    while True:
        pod = pods[rng.randrange(len(pods))]
        if total + pod.request.gpu_total_milli > target:
            break
        total += pod.request.gpu_total_milli
        name = f"{pod.name}-{len(seq)}"
        seq.append(TracePod(name, replace(pod.request, name=name), pod.gpu_products))
    return seq


def subsample(nodes: list[TraceNode], fraction: float) -> list[TraceNode]:
    """Every k-th node of each (GPU model, GPU count) group, keeping the cluster's mix at a smaller size."""
    if fraction >= 1.0:
        return list(nodes)
    step = max(1, round(1 / fraction))
    groups: dict[tuple[str, int], list[TraceNode]] = {}
    for n in sorted(nodes, key=lambda n: n.name):
        groups.setdefault((n.model, n.gpus), []).append(n)
    return sorted((n for g in groups.values() for n in g[::step]), key=lambda n: n.name)
