"""The layer rule of docs/architecture.md: decision cores never import Kubernetes, HTTP or Redis clients, nor the
layers above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.kube import ROOT

IO_LIBRARIES = {"kopf", "kubernetes", "httpx", "redis", "aiohttp"}
UPPER_LAYERS = {"controllers", "operator", "settings"}
CONTROLLER_PLANNERS = ["gangs", "engines", "llmservice", "finetune", "powerbudget", "conditions", "validation",
                       "snapshot", "labels", "packing", "rbac"]  # fmt: skip
AUTOSCALER_CORES = ["forecast", "capacity", "decide", "policies", "types"]


def cores() -> list[Path]:
    paths = [*(ROOT / "packer").glob("*.py"), *(ROOT / "crds").glob("*.py")]
    paths += [ROOT / "autoscaler" / f"{m}.py" for m in AUTOSCALER_CORES]
    paths += [ROOT / "controllers" / f"{m}.py" for m in CONTROLLER_PLANNERS]
    return sorted(p for p in paths if p.exists())


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", cores(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_does_no_io_and_imports_no_upper_layer(path: Path) -> None:
    names = imported(path)
    assert not names & IO_LIBRARIES, f"{path.name} imports I/O libraries {names & IO_LIBRARIES}"
    upper = UPPER_LAYERS - ({"controllers"} if path.parent.name == "controllers" else set())
    assert not names & upper, f"{path.name} imports an upper layer {names & upper}"
    if path.parent.name == "crds":
        assert not names & {"controllers", "autoscaler", "packer", "simulator"}, "crds/ is the bottom layer"
