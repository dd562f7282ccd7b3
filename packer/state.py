"""The packer's working copy of a cluster: node resources as numpy arrays, changed only through undoable steps.

Rows are sorted by node name, so "the first best row" is the deterministic tie-break everywhere. Every change
(`allocate`, `release`) returns its undo, Kueue-style; a what-if is a list of undos replayed in reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from packer.snapshot import (
    GPU_MILLI,
    ClusterSnapshot,
    Gang,
    LabelRequirement,
    PodRequest,
    RunningGang,
    Taint,
    TaintEffect,
    Toleration,
)

Undo = Callable[[], None]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_BLOCKING = (TaintEffect.NO_SCHEDULE, TaintEffect.NO_EXECUTE)


def undo_all(undos: Sequence[Undo]) -> None:
    """Replay undos newest first."""
    for undo in reversed(undos):
        undo()


class ClusterState:
    """Free and total resources of every node, vectorized over nodes; GPUs padded to the widest node."""

    def __init__(
        self,
        names: Sequence[str],
        gpu_free: npt.ArrayLike,
        gpu_count: npt.ArrayLike,
        cpu_free: npt.ArrayLike,
        mem_free: npt.ArrayLike,
        cpu_cap: npt.ArrayLike,
        mem_cap: npt.ArrayLike,
        products: Sequence[str],
        labels: Sequence[dict[str, str]] | None = None,
        taints: Sequence[tuple[Taint, ...]] | None = None,
    ) -> None:
        order = sorted(range(len(names)), key=lambda i: names[i])
        self.names: list[str] = [names[i] for i in order]
        self.row: dict[str, int] = {n: r for r, n in enumerate(self.names)}
        self.gpu_free: IntArray = np.asarray(gpu_free, dtype=np.int64)[order].copy()
        self.gpu_count: IntArray = np.asarray(gpu_count, dtype=np.int64)[order].copy()
        self.cpu_free: IntArray = np.asarray(cpu_free, dtype=np.int64)[order].copy()
        self.mem_free: IntArray = np.asarray(mem_free, dtype=np.int64)[order].copy()
        self.cpu_cap: IntArray = np.asarray(cpu_cap, dtype=np.int64)[order].copy()
        self.mem_cap: IntArray = np.asarray(mem_cap, dtype=np.int64)[order].copy()
        self.product_names: list[str] = sorted(set(products))
        code = {p: i for i, p in enumerate(self.product_names)}
        self.product: IntArray = np.array([code[products[i]] for i in order], dtype=np.int64)
        # Labels are shared with the caller, never written: copying them would dominate large snapshots.
        self.labels: list[dict[str, str]] = [labels[i] for i in order] if labels else [{} for _ in order]
        self.taints: list[tuple[Taint, ...]] = [tuple(taints[i]) for i in order] if taints else [() for _ in order]
        if self.gpu_free.ndim != 2 or self.gpu_free.shape[0] != len(self.names):
            raise ValueError("gpu_free must be a (nodes, max GPUs per node) matrix")
        self._static_cache: dict[tuple[object, ...], BoolArray] = {}
        self._domain_cache: dict[str, tuple[IntArray, list[str]]] = {}

    @classmethod
    def from_snapshot(cls, snapshot: ClusterSnapshot) -> ClusterState:
        """Build the arrays from a snapshot (a copy: the snapshot is never touched again)."""
        nodes = snapshot.nodes
        counts = [len(n.gpu_free_milli) for n in nodes]
        width = max([*counts, 1])
        gpu_free = np.zeros((len(nodes), width), dtype=np.int64)
        for i, n in enumerate(nodes):
            gpu_free[i, : counts[i]] = n.gpu_free_milli
        return cls(
            names=[n.name for n in nodes],
            gpu_free=gpu_free,
            gpu_count=counts,
            cpu_free=[n.cpu_free_milli for n in nodes],
            mem_free=[n.mem_free_mib for n in nodes],
            cpu_cap=[n.cpu_capacity_milli for n in nodes],
            mem_cap=[n.mem_capacity_mib for n in nodes],
            products=[n.gpu_product for n in nodes],
            labels=[n.labels for n in nodes],
            taints=[n.taints for n in nodes],
        )

    @property
    def size(self) -> int:
        """Number of nodes."""
        return len(self.names)

    def fingerprint(self) -> bytes:
        """Bytes of every mutable array, for checks that a what-if was fully undone."""
        return b"".join(a.tobytes() for a in (self.gpu_free, self.cpu_free, self.mem_free))

    # ---- changes (each returns its undo) -------------------------------------------------------------

    def allocate(self, row: int, pod: PodRequest, gpus: Sequence[int]) -> Undo:
        """Take `pod`'s resources on node `row`, GPUs `gpus`; raises if they are not free."""
        idx = list(gpus)
        if len(idx) != pod.gpu_count:
            raise ValueError(f"pod {pod.name} needs {pod.gpu_count} GPU indices, got {len(idx)}")
        if self.cpu_free[row] < pod.cpu_milli or self.mem_free[row] < pod.mem_mib:
            raise ValueError(f"pod {pod.name} does not fit CPU/memory on {self.names[row]}")
        if idx and (self.gpu_free[row, idx] < pod.gpu_milli).any():
            raise ValueError(f"pod {pod.name} does not fit GPUs {idx} on {self.names[row]}")
        self.cpu_free[row] -= pod.cpu_milli
        self.mem_free[row] -= pod.mem_mib
        if idx:
            self.gpu_free[row, idx] -= pod.gpu_milli

        def undo() -> None:
            self.cpu_free[row] += pod.cpu_milli
            self.mem_free[row] += pod.mem_mib
            if idx:
                self.gpu_free[row, idx] += pod.gpu_milli

        return undo

    def release(self, row: int, pod: PodRequest, gpus: Sequence[int]) -> Undo:
        """Give back `pod`'s resources on node `row` (an eviction or a move in a what-if)."""
        idx = list(gpus)
        self.cpu_free[row] += pod.cpu_milli
        self.mem_free[row] += pod.mem_mib
        if idx:
            self.gpu_free[row, idx] += pod.gpu_milli
            if (self.gpu_free[row, idx] > GPU_MILLI).any():
                raise ValueError(f"releasing pod {pod.name} overflows GPUs {idx} on {self.names[row]}")

        def undo() -> None:
            self.cpu_free[row] -= pod.cpu_milli
            self.mem_free[row] -= pod.mem_mib
            if idx:
                self.gpu_free[row, idx] -= pod.gpu_milli

        return undo

    # ---- questions -------------------------------------------------------------------------------------

    def fits(self, pod: PodRequest, rows: IntArray | None = None) -> BoolArray:
        """Which nodes (all, or `rows`) have room for `pod` right now."""
        sel = slice(None) if rows is None else rows
        ok = (self.cpu_free[sel] >= pod.cpu_milli) & (self.mem_free[sel] >= pod.mem_mib)
        if pod.gpu_count:
            ok &= (self.gpu_free[sel] >= pod.gpu_milli).sum(axis=1) >= pod.gpu_count
        return np.asarray(ok, dtype=np.bool_)

    def fits_capacity(self, pod: PodRequest) -> BoolArray:
        """Which nodes could host `pod` if they were empty."""
        ok = (self.cpu_cap >= pod.cpu_milli) & (self.mem_cap >= pod.mem_mib)
        return np.asarray(ok & (self.gpu_count >= pod.gpu_count), dtype=np.bool_)

    def product_mask(self, products: Iterable[str]) -> BoolArray:
        """Nodes whose GPU product is one of `products` (every node when empty)."""
        allowed = frozenset(products)
        if not allowed:
            return np.ones(self.size, dtype=np.bool_)
        wanted = [i for i, p in enumerate(self.product_names) if p in allowed]
        return np.isin(self.product, wanted)

    def static_mask(self, gang: Gang | RunningGang) -> BoolArray:
        """Nodes a gang may use regardless of load: GPU product, required affinity, taints."""
        key = (gang.gpu_products, gang.affinity, gang.tolerations)
        cached = self._static_cache.get(key)
        if cached is not None:
            return cached
        mask = self.product_mask(gang.gpu_products)
        if gang.affinity or any(self.taints):
            for r in np.flatnonzero(mask):
                mask[r] = _affinity_ok(self.labels[r], gang.affinity) and _tolerated(self.taints[r], gang.tolerations)
        mask.setflags(write=False)
        self._static_cache[key] = mask
        return mask

    def domains(self, key: str) -> tuple[IntArray, list[str]]:
        """Topology domain code per node for label `key` (-1 where the label is missing) and the domain names."""
        cached = self._domain_cache.get(key)
        if cached is not None:
            return cached
        values = sorted({lab[key] for lab in self.labels if key in lab})
        code = {v: i for i, v in enumerate(values)}
        codes = np.array([code[lab[key]] if key in lab else -1 for lab in self.labels])
        result = (codes.astype(np.int64), values)
        self._domain_cache[key] = result
        return result

    def pick_gpus(self, row: int, pod: PodRequest, share_gpu: int = -1) -> tuple[int, ...]:
        """GPU indices for `pod` on `row`: the scorer's choice for a share, else the lowest-index fitting GPUs."""
        if not pod.gpu_count:
            return ()
        if pod.is_share and share_gpu >= 0:
            return (share_gpu,)
        free = self.gpu_free[row]
        ok = np.flatnonzero(free >= pod.gpu_milli)
        if pod.is_share:
            # Best fit: the fullest GPU that still has room keeps whole GPUs whole.
            best = ok[np.argmin(free[ok])]
            return (int(best),)
        return tuple(int(i) for i in ok[: pod.gpu_count])


def _affinity_ok(labels: dict[str, str], affinity: tuple[LabelRequirement, ...]) -> bool:
    return all(req.matches(labels) for req in affinity)


def _tolerated(taints: tuple[Taint, ...], tolerations: tuple[Toleration, ...]) -> bool:
    return all(any(t.tolerates(taint) for t in tolerations) for taint in taints if taint.effect in _BLOCKING)
