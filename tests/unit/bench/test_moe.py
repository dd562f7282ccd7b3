"""Smoke test of the MoE rescaling benchmark (bench/moe): the quick run reports every strategy and every target."""

from __future__ import annotations

from bench.moe.__main__ import QUICK, run


def test_quick_run_reports_the_three_strategies_and_the_four_targets() -> None:
    out = run(quick=True)
    markdown = str(out["markdown"])
    for strategy in ("whole-replica", "cold-restart", "in-place"):
        assert f"| {strategy} |" in markdown
    for target in ("zero failed requests", "capacity online >= 9x", ">= 2x the cold restart", "fewer expert bytes"):
        assert markdown.count(target) == 2, target  # once per scenario
    assert "Command: `python -m bench.moe --quick`" in markdown
    runs = out["runs"]
    assert isinstance(runs, dict) and len(runs) == 2
    assert out["scenario"]["step_rps"] == QUICK.step_rps  # type: ignore[index]
