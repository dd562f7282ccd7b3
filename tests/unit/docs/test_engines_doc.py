"""docs/engines.md's conformance table lists exactly the checks the conformance tier runs, so the table cannot
claim a check that does not exist or leave one out."""

from __future__ import annotations

import ast
import re

from tests.kube import ROOT

CONFORMANCE = ROOT / "tests" / "conformance"
ENGINES_DOC = ROOT / "docs" / "engines.md"
TABLE_HEADING = "### The conformance table"


def conformance_checks() -> set[str]:
    """Every test function of the conformance tier."""
    return {
        node.name
        for path in CONFORMANCE.glob("test_*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def documented_checks() -> set[str]:
    """The checks the table's rows name (first column, in backticks)."""
    text = ENGINES_DOC.read_text()
    assert TABLE_HEADING in text, f"docs/engines.md lacks {TABLE_HEADING!r}"
    section = text.split(TABLE_HEADING, 1)[1].split("\n#", 1)[0]
    return {m for row in section.splitlines() if row.startswith("| `") for m in re.findall(r"^\| `(test_\w+)`", row)}


def test_the_conformance_table_names_every_check_of_the_tier_and_no_other() -> None:
    checks, documented = conformance_checks(), documented_checks()
    assert len(checks) >= 20
    assert documented == checks, {"undocumented": sorted(checks - documented), "gone": sorted(documented - checks)}
