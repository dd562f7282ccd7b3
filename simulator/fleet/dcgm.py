"""DCGM exporter text for a simulated GPU node: metric names, types and labels as dcgm-exporter writes them.

Pure functions, so the fleet's /metrics endpoint and the dashboard tests render the same exposition. The labels
follow dcgm-exporter's GPU template: `gpu`, `UUID`, `pci_bus_id`, `device`, `modelName` (NVML's product name,
with spaces), the host label, the `label`-type counters of the counters file (the driver version), then the
Kubernetes pod attributes in sorted order.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from catalogue.gpus import GPU_PROFILES

# Exported families: name -> (type, help), in dcgm-exporter's default-counters order. DCGM_FI_DEV_POWER_MGMT_LIMIT
# is not among dcgm-exporter's default counters: the chart's counters file adds it (helm/ebbtide/dcgm-counters.csv).
FAMILIES: dict[str, tuple[str, str]] = {
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("gauge", "Power management limit (in W)."),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %)."),
    "DCGM_FI_DEV_FB_FREE": ("gauge", "Framebuffer memory free (in MiB)."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
}

# dcgm-exporter up to 4.5.3-4.8.2 names the host label `Hostname`; its main branch renamed it `hostname` after
# that release. Both exist in the field, so the dashboard groups by both.
HOSTNAME_LABEL = "Hostname"
HOSTNAME_LABEL_RENAMED = "hostname"
# A `label`-type counter: dcgm-exporter attaches its value to every series under the field's own name.
DRIVER_VERSION_LABEL = "DCGM_FI_DRIVER_VERSION"
DRIVER_VERSION = "570.133.20"
# PCI buses of the eight GPUs of an HGX baseboard; a larger simulated node continues past them.
_PCI_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)


@dataclass(frozen=True)
class GPUReading:
    """One GPU's figures and, when a pod holds it, that pod (namespace, name)."""

    index: int
    draw_w: float
    util_pct: float
    fb_used_mib: float
    limit_w: float
    pod: tuple[str, str] | None = None
    fb_free_mib: float = 0.0


def gpu_reading(index: int, product: str, engine_power: Mapping[str, Any], pod: tuple[str, str] | None) -> GPUReading:
    """A GPU's reading from its engine's /admin/power answer (empty when idle or unreachable)."""
    profile = GPU_PROFILES.get(product)
    idle = profile.idle_w if profile else 50.0
    tdp = profile.tdp_w if profile else 700.0
    mem = (profile.memory_gb if profile else 80.0) * 1024
    draw = float(engine_power.get("draw_w", engine_power.get("power_w", idle)))
    limit = float(engine_power.get("limit_w", tdp))
    # Utilization follows from draw on the engine's own power curve (idle at 0%, TDP at 100%).
    util = 100 * max(0.0, min(1.0, (draw - idle) / max(tdp - idle, 1.0))) if pod else 0.0
    used = float(engine_power.get("memory_used_mib", mem * 0.9 if pod else 0.0))
    return GPUReading(index, draw, util, used, limit, pod, max(0.0, mem - used))


def gpu_uuid(node: str, index: int) -> str:
    """A stable NVML-style UUID (GPU-xxxxxxxx-xxxx-...) for a simulated GPU."""
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'ebbtide-sim://{node}/gpu/{index}')}"


def pci_bus_id(index: int) -> str:
    """NVML's PCI bus id form (domain:bus:device.function) of the GPU at this index."""
    bus = _PCI_BUSES[index] if index < len(_PCI_BUSES) else 0xE0 + index
    return f"00000000:{bus:02X}:00.0"


def model_name(product: str) -> str:
    """NVML's name for a GPU feature discovery product label (spaces, not dashes)."""
    profile = GPU_PROFILES.get(product)
    return profile.nvml_name if profile else product.replace("-", " ")


def render(
    node: str,
    product: str,
    readings: list[GPUReading],
    *,
    hostname_label: str = HOSTNAME_LABEL,
    driver_version: str = DRIVER_VERSION,
) -> str:
    """The Prometheus text exposition of one node's GPUs."""
    values: dict[str, list[str]] = {m: [] for m in FAMILIES}
    for r in readings:
        labels = (
            f'gpu="{r.index}",UUID="{gpu_uuid(node, r.index)}",pci_bus_id="{pci_bus_id(r.index)}",'
            f'device="nvidia{r.index}",modelName="{model_name(product)}",{hostname_label}="{node}",'
            f'{DRIVER_VERSION_LABEL}="{driver_version}"'
        )
        if r.pod:
            labels += f',container="engine",namespace="{r.pod[0]}",pod="{r.pod[1]}"'
        for metric, v in (
            ("DCGM_FI_DEV_POWER_USAGE", r.draw_w),
            ("DCGM_FI_DEV_POWER_MGMT_LIMIT", r.limit_w),
            ("DCGM_FI_DEV_GPU_UTIL", r.util_pct),
            ("DCGM_FI_DEV_FB_FREE", r.fb_free_mib),
            ("DCGM_FI_DEV_FB_USED", r.fb_used_mib),
        ):
            values[metric].append(f"{metric}{{{labels}}} {v:.3f}")
    out: list[str] = []
    for metric, (typ, help_) in FAMILIES.items():
        out += [f"# HELP {metric} {help_}", f"# TYPE {metric} {typ}", *values[metric]]
    return "\n".join(out) + "\n"
