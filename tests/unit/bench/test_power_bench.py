"""Smoke test of the power benchmark at its quick size: it runs every policy side by side and writes its table."""

from __future__ import annotations

import json
from pathlib import Path

from bench.power.__main__ import POLICIES, main


def test_quick_power_bench_runs_every_policy_and_reports_the_targets(tmp_path: Path) -> None:
    assert main(["--quick", "--servers", "2", "--extras", "0,50", "--duration", "40", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "power-quick.json").read_text())
    assert [r["policy"] for r in rows] == ["no oversubscription", *POLICIES]
    by = {r["policy"]: r for r in rows}
    # The budget is N servers at full power: N servers can never exceed it, static caps share it exactly.
    assert by["no oversubscription"]["seconds_over"] == 0
    assert by["static caps"]["seconds_over"] == 0
    # The emergency path: an excursion over the budget never outlasts one tick.
    assert by["Ebbtide"]["seconds_over_beyond_1s"] == 0
    assert by["no capping"]["cap_changes"] == 0 and by["Ebbtide"]["energy_kwh"] > 0
    text = (tmp_path / "power-quick.md").read_text()
    assert "## Targets" in text and "python -m bench.power" in text
