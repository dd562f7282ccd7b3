"""The GPU catalogue: products Ebbtide knows, keyed by the GPU feature discovery label value.

Pure reference data shared by the API validation, the simulator's performance model and the packer.
Figures are the vendors' datasheet numbers (dense BF16 tensor FLOPs, HBM capacity and bandwidth, TDP).
"""

from __future__ import annotations

from dataclasses import dataclass

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class GPUProfile:
    """One GPU product as the performance and power models see it."""

    product: str  # value of the nvidia.com/gpu.product node label
    short_name: str  # what users write in spec.gpu.types, e.g. "H100"
    memory_gb: float  # HBM capacity, GB (10^9 bytes)
    hbm_gbps: float  # HBM bandwidth, GB/s
    peak_bf16_tflops: float  # dense BF16 tensor-core peak, TFLOP/s
    tdp_w: float  # board power limit at default (max) setting
    idle_w: float  # draw with nothing running
    min_power_limit_w: float  # lowest limit NVML accepts
    # NVML's product name (nvmlDeviceGetName), as nvidia-smi and dcgm-exporter's modelName label print it; GPU
    # feature discovery derives the node label from it by replacing spaces with dashes.
    nvml_name: str


GPU_PROFILES: dict[str, GPUProfile] = {
    p.product: p
    for p in (
        GPUProfile("NVIDIA-H100-80GB-HBM3", "H100", 80.0, 3350.0, 989.0, 700.0, 70.0, 200.0, "NVIDIA H100 80GB HBM3"),
        GPUProfile("NVIDIA-A100-SXM4-80GB", "A100", 80.0, 2039.0, 312.0, 400.0, 55.0, 100.0, "NVIDIA A100-SXM4-80GB"),
        GPUProfile(
            "NVIDIA-A100-SXM4-40GB", "A100-40GB", 40.0, 1555.0, 312.0, 400.0, 50.0, 100.0, "NVIDIA A100-SXM4-40GB"
        ),
        GPUProfile("NVIDIA-L40S", "L40S", 48.0, 864.0, 362.0, 350.0, 35.0, 100.0, "NVIDIA L40S"),
        GPUProfile("NVIDIA-L4", "L4", 24.0, 300.0, 121.0, 72.0, 16.0, 40.0, "NVIDIA L4"),
    )
}

_BY_SHORT = {p.short_name.lower(): p for p in GPU_PROFILES.values()}


def lookup_gpu(name: str) -> GPUProfile | None:
    """Find a profile by product label ("NVIDIA-H100-80GB-HBM3") or short name ("H100"), else None."""
    return GPU_PROFILES.get(name) or _BY_SHORT.get(name.lower())


def known_gpu_names() -> list[str]:
    """Every name `lookup_gpu` accepts, sorted, for error messages."""
    return sorted({*GPU_PROFILES, *(p.short_name for p in GPU_PROFILES.values())})
