"""GPU power: draw vs. utilisation, NVML-style power limits, and how a limit slows work down.

Pure functions and constants; no I/O. The cap curve's shape is fitted to the Zeus measurements (shipped in
`simulator/data/zeus-power`, see docs/simulator.md); `fit_cap_curve` re-derives the constants from those
rows and a unit test checks that it reproduces `CAP_CURVE`.

Model: a GPU doing work that would draw `demand` watts unconstrained runs at `curve(limit / demand)` of its
uncapped speed, where `curve` rises from zero near `x0` and saturates softly at 1. Compute-bound work
(prefill, training) demands the full board power, so any limit below TDP bites. Bandwidth-bound work
(decode) demands less, so a limit only bites lower down, and even then it slows less because power capping
lowers the SM clock while HBM keeps its clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from catalogue.gpus import GPUProfile


class PowerLimitError(ValueError):
    """A requested power limit outside what the board accepts (NVML_ERROR_INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class CapCurve:
    """Relative throughput vs. x = limit / unconstrained draw: a soft minimum of 1 and slope * (x - x0)."""

    x0: float  # limit/draw ratio where throughput would reach zero
    slope: float  # throughput gained per unit of x on the linear part
    sharpness: float  # how abruptly the linear part meets the plateau (higher = sharper knee)

    def __call__(self, x: float) -> float:
        """Throughput at limit/draw ratio x, relative to running far above the draw."""
        ramp = self.slope * (x - self.x0)
        if ramp <= 0:
            return 0.0
        return float((1.0 + ramp ** (-self.sharpness)) ** (-1.0 / self.sharpness))


# Fitted by fit_cap_curve to all 1,609 (limit, time) points of the four Zeus GPUs (RMSE 0.066).
CAP_CURVE = CapCurve(x0=0.195, slope=1.84, sharpness=4.9)

# Never run slower than this fraction, so a pathological demand estimate cannot stall the simulation.
_MIN_SPEED = 0.05


def validate_power_limit(gpu: GPUProfile, watts: float) -> float:
    """Return watts if the board accepts it as a power limit, else raise PowerLimitError (NVML's rule)."""
    if not gpu.min_power_limit_w <= watts <= gpu.tdp_w:
        raise PowerLimitError(
            f"power limit {watts:g} W is outside the range {gpu.product} accepts "
            f"({gpu.min_power_limit_w:g}-{gpu.tdp_w:g} W)"
        )
    return float(watts)


def demand_w(gpu: GPUProfile, activity: float) -> float:
    """Draw of one GPU running work of the given activity (0 = idle, 1 = compute-bound at full clock)."""
    a = min(1.0, max(0.0, activity))
    return gpu.idle_w + (gpu.tdp_w - gpu.idle_w) * a


def power_draw_w(gpu: GPUProfile, utilization: float, limit_w: float | None = None) -> float:
    """Average draw of one GPU at the given utilisation (0..1), never above its power limit."""
    limit = gpu.tdp_w if limit_w is None else limit_w
    return min(limit, demand_w(gpu, utilization))


def speed_factor(gpu: GPUProfile, limit_w: float | None, activity: float, curve: CapCurve = CAP_CURVE) -> float:
    """Throughput under limit_w of work with the given activity, relative to the default limit (TDP)."""
    if limit_w is None or limit_w >= gpu.tdp_w:
        return 1.0
    demand = demand_w(gpu, max(activity, 1e-6))
    # Normalised at TDP: the calibration anchors were measured at the default limit.
    reference = curve(gpu.tdp_w / demand)
    if reference <= 0:
        return 1.0
    return max(_MIN_SPEED, min(1.0, curve(limit_w / demand) / reference))


def zeus_points(rows: Iterable[tuple[str, Mapping[str, str]]]) -> tuple[list[float], list[float]]:
    """(x, y) pairs from Zeus power-trace rows tagged with their GPU: x = limit / draw at the top limit,
    y = time per epoch at the top limit / time per epoch at this limit."""
    groups: dict[tuple[str, str, str, str, str], list[tuple[float, float, float]]] = {}
    for gpu, row in rows:
        key = (gpu, row["dataset"], row["network"], row["batch_size"], row["optimizer"])
        groups.setdefault(key, []).append(
            (float(row["power_limit"]), float(row["time_per_epoch"]), float(row["average_power"]))
        )
    xs: list[float] = []
    ys: list[float] = []
    for key in sorted(groups):
        runs = sorted(groups[key])
        _, top_time, top_draw = runs[-1]
        for limit, time_per_epoch, _ in runs:
            xs.append(limit / top_draw)
            ys.append(top_time / time_per_epoch)
    return xs, ys


def _curve_values(x: np.ndarray, x0: float, slopes: np.ndarray, sharpness: float) -> np.ndarray:
    ramp = np.maximum(np.outer(slopes, x - x0), 1e-12)
    values: np.ndarray = (1.0 + ramp ** (-sharpness)) ** (-1.0 / sharpness)
    return values


def _grid_search(
    x: np.ndarray, y: np.ndarray, x0s: np.ndarray, slopes: np.ndarray, sharpnesses: np.ndarray
) -> tuple[float, float, float, float]:
    best = (np.inf, 0.0, 0.0, 0.0)
    for sharpness in sharpnesses:
        for x0 in x0s:
            sse = ((_curve_values(x, float(x0), slopes, float(sharpness)) - y) ** 2).sum(axis=1)
            i = int(np.argmin(sse))
            if sse[i] < best[0]:
                best = (float(sse[i]), float(x0), float(slopes[i]), float(sharpness))
    return best


def fit_cap_curve(xs: Sequence[float], ys: Sequence[float]) -> tuple[CapCurve, float]:
    """Least-squares fit of CapCurve to (x, y) points by a coarse then a fine grid; returns (curve, RMSE)."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if x.size < 3 or x.size != y.size:
        raise ValueError("need at least three (x, y) points of equal count")
    _, x0, slope, sharp = _grid_search(
        x, y, np.arange(0.0, 0.5001, 0.025), np.arange(0.5, 5.001, 0.1), np.arange(1.0, 8.001, 0.5)
    )
    sse, x0, slope, sharp = _grid_search(
        x,
        y,
        np.round(np.arange(x0 - 0.025, x0 + 0.02501, 0.005), 4),
        np.round(np.arange(max(0.05, slope - 0.1), slope + 0.1001, 0.01), 4),
        np.round(np.arange(max(0.5, sharp - 0.5), sharp + 0.5001, 0.1), 4),
    )
    return CapCurve(x0=round(x0, 4), slope=round(slope, 4), sharpness=round(sharp, 4)), float(np.sqrt(sse / x.size))
