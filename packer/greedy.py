"""The fast path: place a whole gang pod by pod with a scorer, or place nothing.

Every step is an undoable change of a `ClusterState`; a gang that cannot be completed leaves the state exactly as
it found it. Topology-constrained gangs are tried one domain (rack, zone) at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from packer.scoring import Candidates, Scorer, best_index
from packer.snapshot import GPU_MILLI, Gang, PodRequest
from packer.state import BoolArray, ClusterState, Undo, undo_all

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class GangPlacement:
    """Where each pod of a gang goes, in the gang's pod order."""

    rows: tuple[int, ...]
    gpus: tuple[tuple[int, ...], ...]
    domain: str = ""  # the topology domain used, if the gang asked for one


def pod_order(pods: tuple[PodRequest, ...]) -> list[int]:
    """Indices of `pods` in placement order.

    Ordering: (1) GPU asked descending, (2) CPU descending, (3) memory descending, (4) pod name — big pods first
    so that small ones fill around them.
    """
    return sorted(
        range(len(pods)),
        key=lambda i: (-pods[i].gpu_total_milli, -pods[i].cpu_milli, -pods[i].mem_mib, pods[i].name),
    )


def place_pod(
    state: ClusterState, pod: PodRequest, mask: BoolArray, scorer: Scorer
) -> tuple[int, tuple[int, ...]] | None:
    """The best node and GPUs for one pod among the nodes in `mask`, or None when none has room."""
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        return None
    rows = rows[state.fits(pod, rows)]
    if rows.size == 0:
        return None
    scored = scorer.score(Candidates.of(state, rows), pod)
    i = best_index(scored)
    row = int(rows[i])
    return row, state.pick_gpus(row, pod, int(scored.gpu[i]))


def place_gang(
    state: ClusterState,
    gang: Gang,
    scorer: Scorer,
    within: BoolArray | None = None,
    max_domains: int = 32,
) -> tuple[GangPlacement, list[Undo]] | None:
    """Place every pod of `gang` (allocating in `state`) and return the placement with its undos, or None."""
    mask = state.static_mask(gang)
    if within is not None:
        mask = mask & within
    if gang.topology_key and len(gang.pods) > 1:
        codes, names = state.domains(gang.topology_key)
        for d in _domain_order(state, gang, mask, codes, names)[:max_domains]:
            placed = _place_all(state, gang, mask & (codes == d), scorer)
            if placed is not None:
                rows, gpus, undos = placed
                return GangPlacement(rows, gpus, names[d]), undos
        return None
    placed = _place_all(state, gang, mask, scorer)
    if placed is None:
        return None
    rows, gpus, undos = placed
    return GangPlacement(rows, gpus), undos


def _place_all(
    state: ClusterState, gang: Gang, mask: BoolArray, scorer: Scorer
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], list[Undo]] | None:
    undos: list[Undo] = []
    rows = [0] * len(gang.pods)
    gpus: list[tuple[int, ...]] = [()] * len(gang.pods)
    for i in pod_order(gang.pods):
        pod = gang.pods[i]
        found = place_pod(state, pod, mask, scorer)
        if found is None:
            undo_all(undos)
            return None
        rows[i], gpus[i] = found
        undos.append(state.allocate(found[0], pod, found[1]))
    return tuple(rows), tuple(gpus), undos


def _domain_order(state: ClusterState, gang: Gang, mask: BoolArray, codes: IntArray, names: list[str]) -> list[int]:
    """Domains worth trying for a topology-constrained gang.

    Ordering: (1) free GPU in the domain ascending among domains with at least the gang's demand (the tightest
    domain first, keeping large ones whole for large gangs), (2) domain name.
    """
    demand = gang.gpu_total_milli
    labelled = codes >= 0
    free = np.where(mask, state.gpu_free.sum(axis=1), 0)
    per_domain = np.bincount(codes[labelled], weights=free[labelled], minlength=len(names))
    ok = per_domain >= demand
    # Necessary test per pod shape: the domain's nodes, each on its own, must have slots for all pods of it.
    shapes: dict[PodRequest, int] = {}
    for pod in gang.pods:
        key = PodRequest("", pod.cpu_milli, pod.mem_mib, pod.gpu_count, pod.gpu_milli)
        shapes[key] = shapes.get(key, 0) + 1
    for shape, count in shapes.items():
        slots = _slots(state, shape)
        per = np.bincount(codes[labelled], weights=np.where(mask, slots, 0)[labelled], minlength=len(names))
        ok &= per >= count
    usable = [d for d in range(len(names)) if ok[d]]
    return sorted(usable, key=lambda d: (per_domain[d], names[d]))


def _slots(state: ClusterState, pod: PodRequest) -> IntArray:
    """How many copies of `pod` each node could take right now, each resource on its own."""
    big = np.iinfo(np.int64).max
    cpu = state.cpu_free // pod.cpu_milli if pod.cpu_milli else np.full(state.size, big)
    mem = state.mem_free // pod.mem_mib if pod.mem_mib else np.full(state.size, big)
    n = np.minimum(cpu, mem)
    if pod.gpu_count:
        if pod.is_share:
            gpu = (state.gpu_free // pod.gpu_milli).sum(axis=1)  # shares stack on a GPU
        else:
            gpu = (state.gpu_free >= pod.gpu_milli).sum(axis=1) // pod.gpu_count
        n = np.minimum(n, gpu)
    return np.asarray(n, dtype=np.int64)


def unschedulable_reason(state: ClusterState, gang: Gang) -> str:
    """Why `gang` can never fit on this cluster as built (empty when it might), judged on capacity, not load."""
    mask = state.static_mask(gang)
    if not mask.any():
        return "no node matches the gang's GPU product, node affinity and tolerations"
    for pod in gang.pods:
        cap = mask & state.fits_capacity(pod)
        if not cap.any():
            biggest = int(state.gpu_count[mask].max(initial=0))
            return (
                f"pod {pod.name} asks for {pod.gpu_count} GPU(s), {pod.cpu_milli}m CPU, {pod.mem_mib}Mi memory; "
                f"no eligible node is that large (largest has {biggest} GPU(s))"
            )
    demand = gang.gpu_total_milli
    if gang.topology_key and len(gang.pods) > 1:
        codes, names = state.domains(gang.topology_key)
        gpus = np.where(mask & (codes >= 0), state.gpu_count * GPU_MILLI, 0)
        per_domain = np.bincount(codes[codes >= 0], weights=gpus[codes >= 0], minlength=len(names))
        best = int(per_domain.max(initial=0))
        if best < demand:
            return (
                f"gang needs {demand / GPU_MILLI:g} GPUs within one {gang.topology_key}; "
                f"the largest eligible domain has {best / GPU_MILLI:g}"
            )
    elif int((state.gpu_count[mask] * GPU_MILLI).sum()) < demand:
        return f"gang needs {demand / GPU_MILLI:g} GPUs; all eligible nodes together have fewer"
    return ""
