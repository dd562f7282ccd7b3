"""A simulated node's NVML: per-device power limits in milliwatts with the board's constraints, as the real one.

It implements `adapters.nvml.NvmlPort`, so the node agent's `CapApplier` drives it exactly as it drives
`nvidia-ml-py`. Every device is cappable, busy or idle; a limit outside the constraints is refused with NVML's
"Invalid Argument". The owner learns of each change through `on_change` (the fleet slows the engine on that GPU)
and supplies each device's unconstrained draw through `draw_w` (what the engine would draw without a cap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.nvml import NvmlError
from catalogue.gpus import GPUProfile


@dataclass
class SimulatedNvml:
    """NVML power management of one node's `count` GPUs of one product."""

    gpu: GPUProfile
    count: int
    draw_w: Callable[[int], float] | None = None  # device index -> unconstrained draw, watts
    on_change: Callable[[int, float | None], None] | None = None  # device index, new limit (None = default)
    limits_mw: dict[int, int] = field(default_factory=dict)  # devices away from their default limit

    def device_count(self) -> int:
        return self.count

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise NvmlError(f"device {index}: Invalid Argument (the node has {self.count} GPUs)")

    def constraints_mw(self, index: int) -> tuple[int, int]:
        self._check(index)
        return round(self.gpu.min_power_limit_w * 1000), round(self.gpu.tdp_w * 1000)

    def default_limit_mw(self, index: int) -> int:
        self._check(index)
        return round(self.gpu.tdp_w * 1000)

    def enforced_limit_mw(self, index: int) -> int:
        self._check(index)
        return self.limits_mw.get(index, self.default_limit_mw(index))

    def set_limit_mw(self, index: int, milliwatts: int) -> None:
        lo, hi = self.constraints_mw(index)
        if not lo <= milliwatts <= hi:
            raise NvmlError(f"nvmlDeviceSetPowerManagementLimit(device {index}, {milliwatts} mW): Invalid Argument")
        if milliwatts == hi:
            self.limits_mw.pop(index, None)
        else:
            self.limits_mw[index] = milliwatts
        if self.on_change is not None:
            self.on_change(index, self.limit_w(index))

    def power_usage_mw(self, index: int) -> int:
        self._check(index)
        draw = self.draw_w(index) if self.draw_w is not None else self.gpu.idle_w
        return round(min(draw * 1000, self.enforced_limit_mw(index)))

    def limit_w(self, index: int) -> float | None:
        """The limit in force in watts, None at the default."""
        mw = self.limits_mw.get(index)
        return None if mw is None else mw / 1000
