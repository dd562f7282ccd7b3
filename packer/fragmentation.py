"""GPU fragmentation of a node with respect to a target workload, and its gradient (FGD, USENIX ATC'23).

Weng et al., "Beware of Fragmentation": for a target workload M (pod shapes m with popularity p_m), a node's
fragmentation is F_n(M) = sum_m p_m * F_n(m), where F_n(m) is the free GPU the shape m cannot use on n: all of the
node's free GPU if m cannot run there at all (lacks GPUs, CPU, or the GPU product is not allowed), otherwise the free
GPU on the GPUs with less free than m asks per GPU. Scheduling a pod by "fragmentation gradient descent" picks the
node (and GPU) whose F_n grows least. CPU-only shapes count all free GPU, as in the authors' simulator.

Everything is vectorized over candidate nodes (and GPUs) with numpy; `memory_aware` adds memory to the fit test,
which the paper's measure leaves out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from packer.snapshot import GPU_MILLI, PodRequest

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, order=True)
class WorkloadShape:
    """One pod shape of the target workload."""

    cpu_milli: int
    mem_mib: int
    gpu_count: int
    gpu_milli: int  # per GPU; ignored when gpu_count == 0
    gpu_products: frozenset[str] = frozenset()  # allowed products; empty = any

    @classmethod
    def of(cls, pod: PodRequest, gpu_products: Iterable[str] = ()) -> WorkloadShape:
        """The shape of one pod request."""
        milli = pod.gpu_milli if pod.gpu_count else 0
        return cls(pod.cpu_milli, pod.mem_mib, pod.gpu_count, milli, frozenset(gpu_products))


@dataclass(frozen=True)
class ShapeTable:
    """A target workload encoded against one cluster's GPU product list, ready for vectorized use."""

    milli: IntArray  # (M,) per-GPU request; 0 for CPU-only shapes
    count: IntArray  # (M,) GPUs per pod
    cpu: IntArray  # (M,)
    mem: IntArray  # (M,) zeros unless memory-aware
    access: BoolArray  # (products, M) whether shape m may run on product p
    prob: FloatArray  # (M,) popularity, sums to 1
    is_gpu: BoolArray  # (M,)


@dataclass(frozen=True)
class TargetWorkload:
    """The pod shapes the cluster expects and how often each arrives (FGD's "typical pods")."""

    shapes: tuple[WorkloadShape, ...]
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.shapes) != len(self.probs) or not self.shapes:
            raise ValueError("a target workload needs one probability per shape and at least one shape")
        if any(p < 0 for p in self.probs) or abs(sum(self.probs) - 1.0) > 1e-6:
            raise ValueError("shape probabilities must be non-negative and sum to 1")

    @classmethod
    def from_samples(
        cls, samples: Iterable[WorkloadShape], popularity: float = 0.95, gpu_weight: float = 0.0
    ) -> TargetWorkload:
        """The most popular shapes covering `popularity` of the samples, renormalized.

        `gpu_weight` counts a whole-GPU pod as 1 + gpu_count * gpu_weight samples (the authors' GpuResWeight),
        so large pods weigh by the GPUs they need rather than by their number.
        """
        if not 0 < popularity <= 1:
            raise ValueError("popularity must be within (0, 1]")
        counts: dict[WorkloadShape, float] = {}
        for s in samples:
            whole = s.gpu_count > 0 and s.gpu_milli == GPU_MILLI
            counts[s] = counts.get(s, 0.0) + 1.0 + (s.gpu_count * gpu_weight if whole else 0.0)
        if not counts:
            raise ValueError("no samples to build a target workload from")
        total = sum(counts.values())
        # Ordering: (1) count descending, (2) the shape itself, so equal counts never depend on input order.
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept: list[tuple[WorkloadShape, float]] = []
        covered = 0.0
        for shape, c in ranked:
            kept.append((shape, c))
            covered += c
            if covered >= popularity * total:
                break
        return cls(tuple(s for s, _ in kept), tuple(c / covered for _, c in kept))

    def encode(self, product_names: Sequence[str], memory_aware: bool = False) -> ShapeTable:
        """Arrays for vectorized fragmentation over a cluster whose GPU products are `product_names`."""
        shapes = self.shapes
        access = np.ones((max(len(product_names), 1), len(shapes)), dtype=np.bool_)
        for m, s in enumerate(shapes):
            if s.gpu_products:
                access[: len(product_names), m] = [p in s.gpu_products for p in product_names]
        return ShapeTable(
            milli=np.array([s.gpu_milli if s.gpu_count else 0 for s in shapes], dtype=np.int64),
            count=np.array([s.gpu_count for s in shapes], dtype=np.int64),
            cpu=np.array([s.cpu_milli for s in shapes], dtype=np.int64),
            mem=np.array([s.mem_mib if memory_aware else 0 for s in shapes], dtype=np.int64),
            access=access,
            prob=np.array(self.probs, dtype=np.float64),
            is_gpu=np.array([s.gpu_count > 0 for s in shapes], dtype=np.bool_),
        )


def fragmentation(free: IntArray, cpu: IntArray, mem: IntArray, product: IntArray, table: ShapeTable) -> FloatArray:
    """F_n(M) for each node: expected milli-GPU the target workload cannot use. Shapes: (n, G), (n,), (n,), (n,)."""
    ge = free[:, :, None] >= table.milli[None, None, :]  # (n, G, M): GPU has room for shape m's per-GPU ask
    count_ok = ge.sum(axis=1) >= table.count[None, :]
    small = np.einsum("ng,ngm->nm", free, ~ge)  # free GPU on GPUs too small for m
    total = free.sum(axis=1)
    fits = _fits(count_ok, cpu, mem, product, table)
    per_shape = np.where(fits & table.is_gpu[None, :], small, total[:, None])
    return np.asarray(per_shape @ table.prob, dtype=np.float64)


def frag_delta_whole(
    free: IntArray, cpu: IntArray, mem: IntArray, product: IntArray, pod: PodRequest, table: ShapeTable
) -> FloatArray:
    """Gradient for a whole-GPU (or CPU-only) pod: F_n after taking the lowest-index free GPUs minus F_n now."""
    after = free
    if pod.gpu_count:
        full = free >= GPU_MILLI
        take = full & (np.cumsum(full, axis=1) <= pod.gpu_count)
        after = np.where(take, free - GPU_MILLI, free)
    before = fragmentation(free, cpu, mem, product, table)
    later = fragmentation(after, cpu - pod.cpu_milli, mem - pod.mem_mib, product, table)
    return later - before


def frag_delta_share(
    free: IntArray, cpu: IntArray, mem: IntArray, product: IntArray, pod: PodRequest, table: ShapeTable
) -> FloatArray:
    """Gradient for a GPU share on each GPU: (n, G) of F_n after minus now; +inf where the GPU lacks room."""
    r = pod.gpu_milli
    ge_b = free[:, :, None] >= table.milli[None, None, :]  # (n, G, M)
    cnt_b = ge_b.sum(axis=1)  # (n, M)
    small_b = np.einsum("ng,ngm->nm", free, ~ge_b)
    total_b = free.sum(axis=1)
    fits_b = _fits(cnt_b >= table.count[None, :], cpu, mem, product, table)
    frag_b = np.where(fits_b & table.is_gpu[None, :], small_b, total_b[:, None]) @ table.prob

    # Taking r from GPU g changes only that GPU's terms, so each candidate costs O(M), not O(G * M).
    f_a = free - r  # (n, G)
    ge_a = f_a[:, :, None] >= table.milli[None, None, :]
    cnt_a = cnt_b[:, None, :] - ge_b + ge_a  # (n, G, M)
    small_a = small_b[:, None, :] - free[:, :, None] * ~ge_b + f_a[:, :, None] * ~ge_a
    total_a = total_b - r
    cpu_ok = (cpu - pod.cpu_milli)[:, None] >= table.cpu[None, :]
    mem_ok = (mem - pod.mem_mib)[:, None] >= table.mem[None, :]
    static = table.access[product] & cpu_ok & mem_ok & table.is_gpu[None, :]  # (n, M)
    fits_a = static[:, None, :] & (cnt_a >= table.count[None, None, :])
    frag_a = np.where(fits_a, small_a, total_a[:, None, None]) @ table.prob  # (n, G)
    delta = frag_a - frag_b[:, None]
    return np.asarray(np.where(free >= r, delta, np.inf), dtype=np.float64)


def _fits(count_ok: BoolArray, cpu: IntArray, mem: IntArray, product: IntArray, table: ShapeTable) -> BoolArray:
    cpu_ok = cpu[:, None] >= table.cpu[None, :]
    mem_ok = mem[:, None] >= table.mem[None, :]
    return np.asarray(count_ok & cpu_ok & mem_ok & table.access[product], dtype=np.bool_)
