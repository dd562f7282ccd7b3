"""The docs keep up with the code: the API reference is generated, and troubleshooting explains every condition
type and reason of the vocabulary (crds/reasons.py), which is the only way controllers name them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from crds import docs
from crds.reasons import ConditionType, Reason
from tests.kube import ROOT

CONTROLLERS = ROOT / "controllers"
DOCS = ROOT / "docs"


def _text(node: ast.AST | None) -> str | None:
    """The string a node is, if it is a string literal."""
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def literal_reasons() -> list[str]:
    """Places in controllers/ that pass a condition type, reason or Event type as a string literal instead of an
    enum member of crds/reasons.py."""
    found: list[str] = []
    for path in sorted(CONTROLLERS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            spots: list[ast.AST] = []
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "set_condition" and len(node.args) > 3:
                spots = [node.args[1], node.args[3]]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Problem" and node.args:
                spots = [node.args[0]]
            elif isinstance(node, ast.Call):
                spots = [k.value for k in node.keywords if k.arg in ("reason", "type")]
            elif isinstance(node, ast.Tuple) and len(node.elts) == 3:
                first = node.elts[0]
                if isinstance(first, ast.Attribute) and first.attr in ("NORMAL", "WARNING"):
                    spots = [node.elts[1]]
                elif _text(first) in ("Normal", "Warning"):
                    spots = [first]
            found += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in spots if _text(n) is not None]
    return found


def test_controllers_name_reasons_only_through_the_enums() -> None:
    assert literal_reasons() == [], "use crds.reasons (ConditionType, Reason, EventType), not string literals"


def test_api_reference_is_generated_from_the_models() -> None:
    assert docs.main(["--check"]) == 0, "run `python -m crds.docs` (or `make docs`) and commit docs/api.md"
    text = (DOCS / "api.md").read_text()
    for kind in ("LLMService", "FineTuneJob", "PowerBudget"):
        assert f"## {kind}" in text
    assert "`ttftSeconds`" in text and "minReplicas must be less than or equal to maxReplicas" in text


def test_troubleshooting_explains_every_condition_type_and_reason() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    words = {m.value for m in ConditionType} | {m.value for m in Reason}
    missing = sorted(w for w in words if f"`{w}`" not in text)
    assert not missing, f"docs/troubleshooting.md does not explain: {missing}"


def test_committed_docs_and_chart_hold_no_path_of_this_machine() -> None:
    files = [*DOCS.glob("*.md"), ROOT / "README.md", *(ROOT / "helm").rglob("*.*"), *(ROOT / "hack").glob("*")]
    leaked = [str(p.relative_to(ROOT)) for p in files if p.is_file() and p.suffix != ".png" and _leaks(p)]
    assert not leaked, leaked


def _leaks(path: Path) -> bool:
    return re.search(r"(/root/|/home/\w+|/work/main)", path.read_text(errors="ignore")) is not None
