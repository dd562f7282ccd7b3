"""DCGM exporter text for a simulated GPU node: metric names, types and labels as dcgm-exporter writes them.

Pure functions, so the fleet's /metrics endpoint and the dashboard tests render the same exposition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from catalogue.gpus import GPU_PROFILES

# Exported families: name -> (type, help), in dcgm-exporter's default-counters order.
FAMILIES: dict[str, tuple[str, str]] = {
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %)."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("gauge", "Power management limit (in W)."),
}


@dataclass(frozen=True)
class GPUReading:
    """One GPU's figures and, when a pod holds it, that pod (namespace, name)."""

    index: int
    draw_w: float
    util_pct: float
    fb_used_mib: float
    limit_w: float
    pod: tuple[str, str] | None = None


def gpu_reading(index: int, product: str, engine_power: Mapping[str, Any], pod: tuple[str, str] | None) -> GPUReading:
    """A GPU's reading from its NVML state ({"draw_w", "limit_w"}; empty: idle at the default limit)."""
    profile = GPU_PROFILES.get(product)
    idle = profile.idle_w if profile else 50.0
    tdp = profile.tdp_w if profile else 700.0
    mem = (profile.memory_gb if profile else 80.0) * 1024
    draw = float(engine_power.get("draw_w", engine_power.get("power_w", idle)))
    limit = float(engine_power.get("limit_w", tdp))
    # Utilization follows from draw on the engine's own power curve (idle at 0%, TDP at 100%).
    util = 100 * max(0.0, min(1.0, (draw - idle) / max(tdp - idle, 1.0))) if pod else 0.0
    used = float(engine_power.get("memory_used_mib", mem * 0.9 if pod else 0.0))
    return GPUReading(index, draw, util, used, limit, pod)


def render(node: str, product: str, readings: list[GPUReading]) -> str:
    """The Prometheus text exposition of one node's GPUs."""
    values: dict[str, list[str]] = {m: [] for m in FAMILIES}
    for r in readings:
        labels = (
            f'gpu="{r.index}",UUID="GPU-{node}-{r.index}",device="nvidia{r.index}",modelName="{product}",'
            f'Hostname="{node}"'
        )
        if r.pod:
            labels += f',namespace="{r.pod[0]}",pod="{r.pod[1]}",container="engine"'
        for metric, v in (
            ("DCGM_FI_DEV_POWER_USAGE", r.draw_w),
            ("DCGM_FI_DEV_GPU_UTIL", r.util_pct),
            ("DCGM_FI_DEV_FB_USED", r.fb_used_mib),
            ("DCGM_FI_DEV_POWER_MGMT_LIMIT", r.limit_w),
        ):
            values[metric].append(f"{metric}{{{labels}}} {v:.3f}")
    out: list[str] = []
    for metric, (typ, help_) in FAMILIES.items():
        out += [f"# HELP {metric} {help_}", f"# TYPE {metric} {typ}", *values[metric]]
    return "\n".join(out) + "\n"
