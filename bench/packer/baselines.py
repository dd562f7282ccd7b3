"""The benchmark's baseline scorers: kube-scheduler's spreading, the FGD authors' best fit, and FGD itself.

Only the benchmark places with these; the operator's packer always scores with `packer.scoring.EbbtideScorer`.
They implement the packer's `Scorer` interface, so the greedy path (`packer.greedy.place_gang`) runs them as is.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from packer.scoring import Candidates, FragmentationGradient, Scored, ScorerContext, ScorerFactory
from packer.snapshot import GPU_MILLI, PodRequest

IntArray = npt.NDArray[np.int64]


def _best_fit_gpu(free: IntArray, milli: int) -> IntArray:
    """For a share: the fullest GPU with room on each node (lowest index among equals)."""
    masked = np.where(free >= milli, free, np.iinfo(np.int64).max)
    return np.asarray(np.argmin(masked, axis=1), dtype=np.int64)


def _no_gpu(n: int) -> IntArray:
    return np.full(n, -1, dtype=np.int64)


class LeastAllocated:
    """kube-scheduler's NodeResourcesLeastAllocated over CPU, memory and GPU: spread onto the emptiest node."""

    name = "least-allocated"

    def __init__(self, ctx: ScorerContext) -> None:
        self.ctx = ctx

    def score(self, cand: Candidates, pod: PodRequest) -> Scored:
        """Mean free fraction after placement (higher is emptier); a share goes to the fullest GPU that fits."""
        cpu = (cand.cpu_free - pod.cpu_milli) / np.maximum(cand.cpu_cap, 1)
        mem = (cand.mem_free - pod.mem_mib) / np.maximum(cand.mem_cap, 1)
        gcap = cand.gpu_count * GPU_MILLI
        has_gpu = gcap > 0
        gpu = np.where(has_gpu, (cand.free.sum(axis=1) - pod.gpu_total_milli) / np.maximum(gcap, 1), 0.0)
        score = (cpu + mem + gpu) / (2.0 + has_gpu)
        pick = _best_fit_gpu(cand.free, pod.gpu_milli) if pod.is_share else _no_gpu(len(cand.rows))
        return Scored((np.asarray(score, dtype=np.float64),), pick)


class MostAllocated:
    """Best fit as in the FGD authors' simulator: least leftover CPU and GPU (weights 0.5/0.5) wins."""

    name = "most-allocated"

    def __init__(self, ctx: ScorerContext) -> None:
        self.ctx = ctx

    def score(self, cand: Candidates, pod: PodRequest) -> Scored:
        """Negative normalized leftover after placement; a share goes to the fullest GPU that fits."""
        cpu_left = (cand.cpu_free - pod.cpu_milli) / self.ctx.cpu_norm
        gpu_left = (cand.free.sum(axis=1) - pod.gpu_total_milli) / self.ctx.gpu_norm
        score = -(0.5 * cpu_left + 0.5 * gpu_left)
        pick = _best_fit_gpu(cand.free, pod.gpu_milli) if pod.is_share else _no_gpu(len(cand.rows))
        return Scored((np.asarray(score, dtype=np.float64),), pick)


BASELINES: dict[str, ScorerFactory] = {
    LeastAllocated.name: LeastAllocated,
    MostAllocated.name: MostAllocated,
    FragmentationGradient.name: FragmentationGradient,
}


def baseline(name: str) -> ScorerFactory:
    """The baseline scorer registered as `name`; an unknown name is rejected with the known ones listed."""
    try:
        return BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}") from None
