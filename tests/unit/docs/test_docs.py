"""The docs keep up with the code: the API reference is generated, and troubleshooting explains every condition
type, reason and Event the controllers set."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from crds import docs
from tests.kube import ROOT

CONTROLLERS = ROOT / "controllers"
DOCS = ROOT / "docs"


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _assigned(func: ast.AST, name: str) -> set[str]:
    """String constants assigned to `name` anywhere in the function (`reason = "A" if x else "B"`, tuples)."""
    found: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                for i, t in enumerate(names):
                    if isinstance(t, ast.Name) and t.id == name:
                        value = node.value.elts[i] if isinstance(node.value, ast.Tuple) else node.value
                        found |= {s for s in _strings(value) if re.fullmatch(r"[A-Z][A-Za-z]+", s)}
    return found


def _returned(tree: ast.Module, name: str) -> set[str]:
    """CamelCase string constants a module-level helper returns (a reason computed by a function)."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and ret.value is not None:
                    found |= {s for s in _strings(ret.value) if re.fullmatch(r"[A-Z][A-Za-z]+", s)}
    return found


def _text(node: ast.AST | None) -> str | None:
    """The string a node is, if it is a string literal."""
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def controller_vocabulary() -> tuple[set[str], set[str]]:
    """(condition types, reasons) the controllers write, read from their source."""
    types: set[str] = set()
    reasons: set[str] = set()

    def add(into: set[str], node: ast.AST | None) -> None:
        text = _text(node)
        if text is not None:
            into.add(text)

    for path in CONTROLLERS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for func in funcs:
            for node in ast.walk(func):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "set_condition":
                    reason = node.args[3]
                    add(types, node.args[1])
                    add(reasons, reason)
                    if isinstance(reason, ast.Name):
                        reasons |= _assigned(func, reason.id)
                    elif isinstance(reason, ast.Call) and isinstance(reason.func, ast.Name):
                        reasons |= _returned(tree, reason.func.id)
                elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Problem" and node.args:
                    add(reasons, node.args[0])
                elif isinstance(node, ast.Call):
                    # Events posted directly: event(body, "Warning", "Reason", ...) or event(..., reason="Reason")
                    for k in node.keywords:
                        if k.arg == "reason":
                            add(reasons, k.value)
                    for a, b in zip(node.args, node.args[1:], strict=False):
                        if _text(a) in ("Normal", "Warning"):
                            add(reasons, b)
                elif (
                    isinstance(node, ast.Tuple) and len(node.elts) == 3 and _text(node.elts[0]) in ("Normal", "Warning")
                ):
                    # Events a planner returns: ("Normal" | "Warning", "Reason", message)
                    second = node.elts[1]
                    add(reasons, second)
                    if isinstance(second, ast.Name):
                        reasons |= _assigned(func, second.id)
                elif isinstance(node, ast.Dict):
                    # A condition written as a literal: {"type": ..., "reason": ...}
                    keys = {_text(k): v for k, v in zip(node.keys, node.values, strict=True)}
                    if "type" in keys and "reason" in keys and _text(keys["reason"]) is not None:
                        add(types, keys["type"])
                        add(reasons, keys["reason"])
    return types, reasons


def test_api_reference_is_generated_from_the_models() -> None:
    assert docs.main(["--check"]) == 0, "run `python -m crds.docs` (or `make docs`) and commit docs/api.md"
    text = (DOCS / "api.md").read_text()
    for kind in ("LLMService", "FineTuneJob", "PowerBudget"):
        assert f"## {kind}" in text
    assert "`ttftSeconds`" in text and "minReplicas must be less than or equal to maxReplicas" in text


def test_the_reader_finds_the_vocabulary_it_should() -> None:
    types, reasons = controller_vocabulary()
    assert {"Ready", "Progressing", "Degraded", "Preempted"} <= types
    assert {"ModelDoesNotFit", "InvalidSpec", "NoNodesMatched", "ScalingDown", "Checkpointed", "Autoscaled"} <= reasons


def test_troubleshooting_explains_every_condition_type_and_reason() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    types, reasons = controller_vocabulary()
    missing = sorted(w for w in types | reasons if f"`{w}`" not in text)
    assert not missing, f"docs/troubleshooting.md does not explain: {missing}"


def test_committed_docs_and_chart_hold_no_path_of_this_machine() -> None:
    files = [*DOCS.glob("*.md"), ROOT / "README.md", *(ROOT / "helm").rglob("*.*"), *(ROOT / "hack").glob("*")]
    leaked = [str(p.relative_to(ROOT)) for p in files if p.is_file() and p.suffix != ".png" and _leaks(p)]
    assert not leaked, leaked


def _leaks(path: Path) -> bool:
    return re.search(r"(/root/|/home/\w+|/work/main)", path.read_text(errors="ignore")) is not None
