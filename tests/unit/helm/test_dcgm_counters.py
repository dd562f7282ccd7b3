"""The chart's dcgm-exporter counters file: dcgm-exporter's format, and every DCGM field Ebbtide reads is in it."""

from __future__ import annotations

import re

from simulator.fleet import dcgm
from tests.helmchart import CHART, find, render
from tests.kube import ROOT
from tests.unit.helm.test_dashboard import queried_metrics

COUNTERS = CHART / "dcgm-counters.csv"
TYPES = {"gauge", "counter", "label"}
# Production code and the dashboard are where Ebbtide reads DCGM fields; the simulator only writes them.
READERS = ("operator", "controllers", "adapters", "autoscaler", "bench", "catalogue", "crds")


def counters() -> dict[str, str]:
    """Field -> Prometheus type, parsed as dcgm-exporter reads the file: `#` comments, three comma-separated fields."""
    out: dict[str, str] = {}
    for n, line in enumerate(COUNTERS.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        assert len(parts) == 3 and all(parts), f"line {n} is not `field, type, help`: {line!r}"
        field, kind, _ = parts
        assert re.fullmatch(r"DCGM_FI_[A-Z0-9_]+", field) and kind in TYPES, f"line {n}: {line!r}"
        assert field not in out, f"line {n} repeats {field}"
        out[field] = kind
    return out


def fields_read_by_source() -> set[str]:
    found: set[str] = set()
    for top in READERS:
        for path in (ROOT / top).rglob("*.py"):
            found |= set(re.findall(r"\bDCGM_FI_[A-Z0-9_]+", path.read_text()))
    return found


def test_every_dcgm_field_the_dashboard_the_operator_or_the_simulated_nodes_use_is_collected() -> None:
    have = counters()
    dashboard = {m for m in queried_metrics() if m.startswith("DCGM_FI_")}
    wanted = dashboard | fields_read_by_source() | set(dcgm.FAMILIES) | {dcgm.DRIVER_VERSION_LABEL}
    assert "DCGM_FI_DEV_POWER_USAGE" in dashboard
    missing = wanted - set(have)
    assert not missing, f"helm/ebbtide/dcgm-counters.csv lacks {sorted(missing)}"
    # The power cap is the field dcgm-exporter's default counters leave out: the reason the chart ships the file.
    assert have["DCGM_FI_DEV_POWER_MGMT_LIMIT"] == "gauge" and have[dcgm.DRIVER_VERSION_LABEL] == "label"
    for name, (kind, _) in dcgm.FAMILIES.items():
        assert have[name] == kind, name


def test_chart_ships_the_counters_file_as_a_config_map_under_the_gpu_operators_key() -> None:
    cm = find(render(), "ConfigMap", "-dcgm-counters")
    assert cm["metadata"]["namespace"] == "ebbtide-system"
    assert cm["data"]["dcgm-metrics.csv"] == COUNTERS.read_text().rstrip("\n")
    moved = find(render("dcgmExporter.counters.namespace=gpu-operator", "dcgmExporter.counters.key=m.csv"), "ConfigMap",
                 "-dcgm-counters")  # fmt: skip
    assert moved["metadata"]["namespace"] == "gpu-operator" and set(moved["data"]) == {"m.csv"}
    assert not [o for o in render("dcgmExporter.counters.enabled=false") if o["metadata"]["name"].endswith("counters")]
