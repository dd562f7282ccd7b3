"""NVML power limits: a small port, the real backend on `nvidia-ml-py`, and the node agent's apply step.

The port speaks NVML's own units and rules: milliwatts, one device at a time, a limit only within
`nvmlDeviceGetPowerManagementLimitConstraints`, the limit in force read back with
`nvmlDeviceGetEnforcedPowerLimit`, and `nvmlDeviceGetPowerManagementDefaultLimit` restored when a cap is lifted.
The simulated fleet implements the same port (`simulator/fleet/nvml.py`), so the agent's logic is one code path.

`CapApplier.apply` is what the node agent runs on every change of its node's caps: it clamps nothing silently (a
cap outside the constraints is refused and reported), never retries a refused value hot (it waits `backoff_s`
or for a different cap), and reports the enforced limit of every device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# The node annotation the operator writes (desired caps) and the agent answers (enforced limits); see docs/power.md.
CAPS_ANNOTATION = "ebbtide.dev/power-caps"
ENFORCED_ANNOTATION = "ebbtide.dev/power-caps-enforced"


class NvmlError(RuntimeError):
    """NVML refused a call (the message carries NVML's own error string)."""


class NvmlPort(Protocol):
    """The NVML calls the node agent makes, in NVML's units (milliwatts, device index)."""

    def device_count(self) -> int: ...

    def constraints_mw(self, index: int) -> tuple[int, int]:
        """(min, max) from nvmlDeviceGetPowerManagementLimitConstraints."""
        ...

    def default_limit_mw(self, index: int) -> int:
        """nvmlDeviceGetPowerManagementDefaultLimit."""
        ...

    def enforced_limit_mw(self, index: int) -> int:
        """nvmlDeviceGetEnforcedPowerLimit."""
        ...

    def set_limit_mw(self, index: int, milliwatts: int) -> None:
        """nvmlDeviceSetPowerManagementLimit (needs root or CAP_SYS_ADMIN)."""
        ...

    def power_usage_mw(self, index: int) -> int:
        """nvmlDeviceGetPowerUsage."""
        ...


class PynvmlBackend:
    """The real NVML, through `nvidia-ml-py` (the `nodeagent` extra); imported only when constructed."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlError("nvidia-ml-py is not installed (pip install 'ebbtide[nodeagent]')") from exc
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlError(f"nvmlInit: {exc}") from exc

    def _call(self, name: str, index: int, *args: int) -> Any:
        try:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            return getattr(self._nvml, name)(handle, *args)
        except self._nvml.NVMLError as exc:
            raise NvmlError(f"{name}(device {index}): {exc}") from exc

    def device_count(self) -> int:
        try:
            return int(self._nvml.nvmlDeviceGetCount())
        except self._nvml.NVMLError as exc:
            raise NvmlError(f"nvmlDeviceGetCount: {exc}") from exc

    def constraints_mw(self, index: int) -> tuple[int, int]:
        lo, hi = self._call("nvmlDeviceGetPowerManagementLimitConstraints", index)
        return int(lo), int(hi)

    def default_limit_mw(self, index: int) -> int:
        return int(self._call("nvmlDeviceGetPowerManagementDefaultLimit", index))

    def enforced_limit_mw(self, index: int) -> int:
        return int(self._call("nvmlDeviceGetEnforcedPowerLimit", index))

    def set_limit_mw(self, index: int, milliwatts: int) -> None:
        self._call("nvmlDeviceSetPowerManagementLimit", index, milliwatts)

    def power_usage_mw(self, index: int) -> int:
        return int(self._call("nvmlDeviceGetPowerUsage", index))

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


@dataclass(frozen=True)
class DeviceReport:
    """One device after an apply: the limit asked for (None = default), the limit in force, and any refusal."""

    index: int
    requested_mw: int | None
    enforced_mw: int
    default_mw: int
    error: str | None = None


@dataclass
class CapApplier:
    """Applies desired per-GPU caps (watts; None = default) through an NVML port, with no hot retries."""

    nvml: NvmlPort
    backoff_s: float = 60.0
    _refused: dict[int, tuple[int | None, float, str]] = field(default_factory=dict)  # index -> (mW, when, why)

    def apply(self, caps: Mapping[int, float | None], now: float) -> list[DeviceReport]:
        """Set every device's limit to its cap (devices absent from `caps` go back to their default)."""
        reports = []
        for index in range(self.nvml.device_count()):
            reports.append(self._apply_one(index, caps.get(index), now))
        return reports

    def _apply_one(self, index: int, cap_w: float | None, now: float) -> DeviceReport:
        try:
            default = self.nvml.default_limit_mw(index)
            want = default if cap_w is None else round(cap_w * 1000)
            lo, hi = self.nvml.constraints_mw(index)
            enforced = self.nvml.enforced_limit_mw(index)
        except NvmlError as exc:
            return DeviceReport(index, None, 0, 0, str(exc))
        requested = None if cap_w is None else want
        refused = self._refused.get(index)
        if refused is not None and refused[0] == requested and now - refused[1] < self.backoff_s:
            return DeviceReport(index, requested, enforced, default, refused[2])
        if not lo <= want <= hi:
            why = f"{want} mW is outside the device's constraints [{lo}, {hi}] mW"
            self._refused[index] = (requested, now, why)
            return DeviceReport(index, requested, enforced, default, why)
        if enforced != want:
            try:
                self.nvml.set_limit_mw(index, want)
                enforced = self.nvml.enforced_limit_mw(index)
            except NvmlError as exc:
                self._refused[index] = (requested, now, str(exc))
                return DeviceReport(index, requested, enforced, default, str(exc))
        self._refused.pop(index, None)
        return DeviceReport(index, requested, enforced, default)


def parse_caps(annotation: str | None) -> dict[int, float | None]:
    """The desired caps from the node annotation: {"<gpu index>": watts | null}; malformed entries are dropped."""
    if not annotation:
        return {}
    try:
        raw = json.loads(annotation)
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    caps: dict[int, float | None] = {}
    for k, v in raw.items():
        if not str(k).isdigit() or not (v is None or isinstance(v, int | float)):
            continue
        caps[int(k)] = None if v is None else float(v)
    return caps


def render_caps(caps: Mapping[int, float | None]) -> str:
    """The node annotation for these caps (sorted, so an unchanged plan writes an unchanged annotation)."""
    return json.dumps({str(i): caps[i] for i in sorted(caps)}, separators=(",", ":"))


def render_reports(reports: list[DeviceReport]) -> str:
    """The agent's answer annotation: the enforced limit (watts) and any refusal of every device."""
    out: dict[str, dict[str, Any]] = {}
    for r in reports:
        entry: dict[str, Any] = {"enforcedW": r.enforced_mw / 1000, "defaultW": r.default_mw / 1000}
        if r.error:
            entry["error"] = r.error
        out[str(r.index)] = entry
    return json.dumps(out, separators=(",", ":"), sort_keys=True)
