"""The power-cap curve: re-fitted from the Zeus measurements, and how it treats compute- vs memory-bound work."""

from __future__ import annotations

import csv

import pytest

from catalogue.gpus import lookup_gpu
from catalogue.power import CAP_CURVE, PowerLimitError, fit_cap_curve, speed_factor, validate_power_limit, zeus_points
from simulator.traces import SLICES


def zeus_rows() -> list[tuple[str, dict[str, str]]]:
    # The four Zeus power summaries ship whole with the repository (simulator/data/README.md).
    files = sorted((SLICES / "zeus-power").glob("summary_power_*.csv"))
    assert len(files) == 4, files
    rows: list[tuple[str, dict[str, str]]] = []
    for path in files:
        gpu = path.stem.removeprefix("summary_power_")
        with path.open(newline="") as f:
            rows.extend((gpu, row) for row in csv.DictReader(f))
    return rows


def test_fitted_constants_match_a_refit_of_the_zeus_data() -> None:
    xs, ys = zeus_points(zeus_rows())
    assert len(xs) > 1500
    curve, rmse = fit_cap_curve(xs, ys)
    assert curve == CAP_CURVE
    assert rmse < 0.08


def test_curve_shape() -> None:
    assert CAP_CURVE(CAP_CURVE.x0) == 0.0
    values = [CAP_CURVE(x / 20) for x in range(4, 40)]
    assert values == sorted(values)
    assert CAP_CURVE(0.5) == pytest.approx(0.55, abs=0.05)
    assert CAP_CURVE(1.5) > 0.99


def test_no_limit_or_tdp_means_full_speed() -> None:
    h100 = lookup_gpu("H100")
    assert h100 is not None
    assert speed_factor(h100, None, 1.0) == 1.0
    assert speed_factor(h100, h100.tdp_w, 1.0) == 1.0


@pytest.mark.parametrize("limit", [200, 300, 400, 500, 600])
def test_memory_bound_work_is_less_sensitive_than_compute_bound(limit: float) -> None:
    h100 = lookup_gpu("H100")
    assert h100 is not None
    compute = speed_factor(h100, limit, 1.0)
    memory = speed_factor(h100, limit, 0.6)
    assert compute < memory <= 1.0


def test_limits_follow_nvml_range() -> None:
    l4 = lookup_gpu("L4")
    assert l4 is not None
    assert validate_power_limit(l4, 40) == 40.0
    for bad in (39, 73):
        with pytest.raises(PowerLimitError, match="40-72 W"):
            validate_power_limit(l4, bad)
