"""The folder rule of docs/architecture.md is checked by `lint-imports` (`.importlinter`); these tests keep that
check honest: every package is under a contract, the contracts run clean, and operator/ (a folder of scripts,
which import-linter cannot see) imports no simulation."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
from pathlib import Path

from tests.kube import ROOT

NOT_PRODUCT = {"tests", "hack", "examples", "docs", "helm", "operator", "build"}


def contract_config() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    return config


def test_every_top_level_package_is_under_the_contracts() -> None:
    roots = set(contract_config()["importlinter"]["root_packages"].split())
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - NOT_PRODUCT
    assert packages - roots == set(), "a top-level package escapes .importlinter: add it to root_packages"


def test_the_import_contracts_are_kept() -> None:
    linter = Path(sys.executable).parent / "lint-imports"
    exe = str(linter) if linter.exists() else shutil.which("lint-imports")
    assert exe, "lint-imports is not installed (it is in the dev extra)"
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_operator_scripts_import_no_simulation_or_benchmark() -> None:
    for path in (ROOT / "operator").glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        banned = names & {"simulator", "bench", "trainer"}
        assert not banned, f"{path.name} imports {banned}"


def test_the_operator_image_ships_no_simulator() -> None:
    dockerfile = (ROOT / "operator" / "Dockerfile").read_text()
    copied = {line.split()[1].rstrip("/") for line in dockerfile.splitlines() if line.startswith("COPY ")}
    assert "simulator" not in copied and "bench" not in copied
