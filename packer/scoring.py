"""Node scorers for the greedy path: Ebbtide's own and FGD's gradient it builds on, behind one tiny interface.

A scorer sees the candidate nodes (those with room for the pod) as arrays and returns lexicographic keys, higher
is better; the greedy path takes the best and breaks remaining ties on node name. For a GPU share it also names
the GPU on each node. Scorers are pure and keep no state between calls except caches of their own inputs.
The benchmark's baselines (LeastAllocated, MostAllocated) implement the same interface in bench/packer/baselines.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from packer.fragmentation import ShapeTable, TargetWorkload, frag_delta_share, frag_delta_whole
from packer.snapshot import GPU_MILLI, PodRequest
from packer.state import ClusterState

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Candidates:
    """The nodes a pod may go to right now, as arrays aligned with `rows` (ascending, i.e. by node name)."""

    rows: IntArray
    free: IntArray  # (n, G) free milli-GPU per GPU
    gpu_count: IntArray
    cpu_free: IntArray
    mem_free: IntArray
    cpu_cap: IntArray
    mem_cap: IntArray
    product: IntArray

    @classmethod
    def of(cls, state: ClusterState, rows: IntArray) -> Candidates:
        """Gather the candidate rows of `state`."""
        return cls(
            rows=rows,
            free=state.gpu_free[rows],
            gpu_count=state.gpu_count[rows],
            cpu_free=state.cpu_free[rows],
            mem_free=state.mem_free[rows],
            cpu_cap=state.cpu_cap[rows],
            mem_cap=state.mem_cap[rows],
            product=state.product[rows],
        )


@dataclass(frozen=True)
class Scored:
    """Lexicographic keys per candidate (higher is better) and the GPU chosen for a share (-1 otherwise)."""

    keys: tuple[FloatArray, ...]
    gpu: IntArray


class Scorer(Protocol):
    """Rank candidate nodes for one pod. No I/O, no clock."""

    name: str

    def score(self, cand: Candidates, pod: PodRequest) -> Scored: ...


ScorerFactory = Callable[["ScorerContext"], Scorer]


@dataclass(frozen=True)
class ScorerContext:
    """What scorers may know about the cluster as a whole."""

    product_names: tuple[str, ...]
    workload: TargetWorkload
    cpu_norm: float  # largest node CPU capacity, to normalize best-fit terms
    gpu_norm: float  # largest node GPU capacity in milli-GPUs

    @classmethod
    def of(cls, state: ClusterState, workload: TargetWorkload) -> ScorerContext:
        """Context for scoring on `state` against `workload`."""
        return cls(
            product_names=tuple(state.product_names),
            workload=workload,
            cpu_norm=float(max(int(state.cpu_cap.max(initial=1)), 1)),
            gpu_norm=float(max(int(state.gpu_count.max(initial=1)), 1) * GPU_MILLI),
        )


def best_index(scored: Scored) -> int:
    """Position of the best candidate: highest keys, then the lowest row (node name) as the final tie-break."""
    n = len(scored.gpu)
    # np.lexsort sorts by its last key first; the position itself is the last-resort tie-break.
    order = np.lexsort((np.arange(n), *(-k for k in reversed(scored.keys))))
    return int(order[0])


def _no_gpu(n: int) -> IntArray:
    return np.full(n, -1, dtype=np.int64)


class FragmentationGradient:
    """FGD: the node (and GPU) whose expected fragmentation w.r.t. the target workload grows least.

    The base of `EbbtideScorer`; the benchmark also runs it on its own as the FGD paper's policy.
    """

    name = "fgd"
    memory_aware = False  # the paper's measure tests CPU and GPU only

    def __init__(self, ctx: ScorerContext) -> None:
        self.ctx = ctx
        self.table: ShapeTable = ctx.workload.encode(ctx.product_names, memory_aware=self.memory_aware)

    def gradient(self, cand: Candidates, pod: PodRequest) -> tuple[FloatArray, IntArray]:
        """Fragmentation growth per node and, for a share, the GPU that achieves it."""
        n = cand.free.shape[0]
        # Nodes in the same state (product, CPU, memory, multiset of free GPU) have the same gradient; computing
        # it once per state keeps the cost proportional to distinct states, which is small on real clusters.
        order = np.argsort(cand.free, axis=1, kind="stable")
        sorted_free = np.take_along_axis(cand.free, order, axis=1)
        key = np.column_stack((cand.product, cand.cpu_free, cand.mem_free, sorted_free))
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        reps_free = sorted_free[first]
        args = (reps_free, cand.cpu_free[first], cand.mem_free[first], cand.product[first])
        if not pod.is_share:
            return frag_delta_whole(*args, pod, self.table)[inverse], _no_gpu(n)
        per_gpu_sorted = frag_delta_share(*args, pod, self.table)[inverse]  # (n, G) in sorted-GPU order
        per_gpu = np.empty_like(per_gpu_sorted)
        np.put_along_axis(per_gpu, order, per_gpu_sorted, axis=1)
        return self._pick(per_gpu, cand.free)

    def _pick(self, per_gpu: FloatArray, free: IntArray) -> tuple[FloatArray, IntArray]:
        """The paper's choice among GPUs: least growth, lowest GPU index among equals."""
        gpu = np.asarray(np.argmin(per_gpu, axis=1), dtype=np.int64)
        return per_gpu[np.arange(len(gpu)), gpu], gpu

    def score(self, cand: Candidates, pod: PodRequest) -> Scored:
        """Least fragmentation growth first."""
        delta, gpu = self.gradient(cand, pod)
        return Scored((-delta,), gpu)


class EbbtideScorer(FragmentationGradient):
    """FGD's gradient, memory-aware, with best fit to settle the ties that fragmentation alone leaves open."""

    name = "ebbtide"
    memory_aware = True

    def _pick(self, per_gpu: FloatArray, free: IntArray) -> tuple[FloatArray, IntArray]:
        """Least growth; among equal growth the fullest GPU, so whole GPUs stay whole."""
        rounded = np.round(per_gpu, 6)
        best = rounded.min(axis=1, keepdims=True)
        tied_free = np.where(rounded == best, free, np.iinfo(np.int64).max)
        gpu = np.asarray(np.argmin(tied_free, axis=1), dtype=np.int64)
        return per_gpu[np.arange(len(gpu)), gpu], gpu

    def score(self, cand: Candidates, pod: PodRequest) -> Scored:
        """Keys: (1) least fragmentation growth, (2) least GPU left on the node, (3) least CPU left."""
        delta, gpu = self.gradient(cand, pod)
        gpu_left = (cand.free.sum(axis=1) - pod.gpu_total_milli) / self.ctx.gpu_norm
        cpu_left = (cand.cpu_free - pod.cpu_milli) / self.ctx.cpu_norm
        return Scored((-np.round(delta, 6), -gpu_left, -cpu_left), gpu)
