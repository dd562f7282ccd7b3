"""FGD's fragmentation measure on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from packer.fragmentation import TargetWorkload, WorkloadShape, frag_delta_share, fragmentation
from packer.snapshot import PodRequest

HALF = WorkloadShape(cpu_milli=0, mem_mib=0, gpu_count=1, gpu_milli=500)
WHOLE2 = WorkloadShape(cpu_milli=0, mem_mib=0, gpu_count=2, gpu_milli=1000)
WORKLOAD = TargetWorkload((HALF, WHOLE2), (0.5, 0.5))


def frag(free: list[int], cpu: int = 10**6) -> float:
    table = WORKLOAD.encode([""])
    return float(fragmentation(np.array([free]), np.array([cpu]), np.array([10**6]), np.array([0]), table)[0])


def test_hand_computed_fragmentation() -> None:
    # GPUs [1000, 1000, 300]: the half-GPU shape fits, only the 300 is a fragment for it; the 2-GPU shape fits,
    # fragments are everything under 1000 (the 300). F = 0.5 * 300 + 0.5 * 300.
    assert frag([1000, 1000, 300]) == pytest.approx(300.0)
    # [1000, 300]: the 2-GPU shape cannot run, so all 1300 is fragment for it: F = 0.5 * 300 + 0.5 * 1300.
    assert frag([1000, 300]) == pytest.approx(800.0)
    # Without CPU nothing fits: all free GPU is fragment.
    assert frag([1000, 1000], cpu=-1) == pytest.approx(2000.0)


def test_gradient_prefers_the_gpu_that_fragments_least() -> None:
    table = WORKLOAD.encode([""])
    free = np.array([[1000, 1000, 600]])
    delta = frag_delta_share(
        free, np.array([10**6]), np.array([10**6]), np.array([0]), PodRequest("p", 0, 0, 1, 500), table
    )
    assert int(np.argmin(delta[0])) == 2, "a share should fill the partly used GPU, keeping two whole GPUs"


def test_popularity_threshold_keeps_the_common_shapes() -> None:
    samples = [HALF] * 6 + [WHOLE2] * 3 + [WorkloadShape(0, 0, 8, 1000)]
    wl = TargetWorkload.from_samples(samples, popularity=0.9)
    assert wl.shapes == (HALF, WHOLE2)
    assert wl.probs == pytest.approx((6 / 9, 3 / 9))
