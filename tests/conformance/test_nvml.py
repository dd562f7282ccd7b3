"""The node agent's NVML calls through the real nvidia-ml-py binding, against the simulated libnvidia-ml.so.1 the
real-node tier gives the agent's pod (simulator/nvml): the production backend drives it, and it answers as the
fleet's SimulatedNvml does (milliwatts, per device, constraints, refusals, limits that outlive the process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.nvml import CapApplier, NvmlError
from catalogue.gpus import GPU_PROFILES
from simulator.fleet.nvml import SimulatedNvml
from tests.conformance.engines import ROOT, absent

pytestmark = pytest.mark.conformance

H100 = GPU_PROFILES["NVIDIA-H100-80GB-HBM3"]
GPUS = 2
STEPS: list[dict[int, float | None]] = [{0: 350.0, 1: None}, {0: 350.0, 1: 100.0}, {1: 450.0}, {}]

# Run in a process of its own: the dynamic loader reads LD_LIBRARY_PATH only when a process starts.
AGENT = """
import json, os, sys
from adapters.nvml import CapApplier, NvmlError, PynvmlBackend
steps = [{int(k): v for k, v in s.items()} for s in json.loads(sys.argv[1])]
nvml = PynvmlBackend()
if sys.argv[3] != "root":
    os.seteuid(int(sys.argv[3]))  # after the library is loaded, which an unprivileged user may not read here
agent = CapApplier(nvml)
out = {"found": [nvml.enforced_limit_mw(i) for i in range(nvml.device_count())]}
out |= {"count": nvml.device_count(), "constraints": nvml.constraints_mw(0), "usage": nvml.power_usage_mw(0)}
out["steps"] = [[[r.index, r.requested_mw, r.enforced_mw, r.default_mw, bool(r.error)] for r in agent.apply(s, 0.0)]
                for s in steps[:-1]]
try:
    nvml.set_limit_mw(1, 1)
    out["refused"] = None
except NvmlError as exc:
    out["refused"] = str(exc)
out["left"] = [nvml.enforced_limit_mw(i) for i in range(nvml.device_count())]
if sys.argv[2] == "restore":
    agent.apply(steps[-1], 0.0)
    out["left"] = [nvml.enforced_limit_mw(i) for i in range(nvml.device_count())]
nvml.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        absent("nvidia-ml-py is not installed (the dev extra has it)")
    out = tmp_path_factory.mktemp("simnvml")
    built = subprocess.run([str(ROOT / "hack" / "build-simnvml.sh"), str(out)], capture_output=True, text=True)
    if built.returncode == 3:
        absent(built.stderr.strip())
    assert built.returncode == 0, built.stderr
    return out


def _agent(library: Path, state: Path, mode: str, user: str = "root") -> dict[str, Any]:
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(library),
        "EBBTIDE_SIMNVML_GPUS": str(GPUS),
        "EBBTIDE_SIMNVML_MIN_MW": str(round(H100.min_power_limit_w * 1000)),
        "EBBTIDE_SIMNVML_MAX_MW": str(round(H100.tdp_w * 1000)),
        "EBBTIDE_SIMNVML_IDLE_MW": str(round(H100.idle_w * 1000)),
        "EBBTIDE_SIMNVML_STATE": str(state),
        "PYTHONPATH": str(ROOT),
    }
    steps = json.dumps([{str(k): v for k, v in s.items()} for s in STEPS])
    run = subprocess.run(
        [sys.executable, "-c", AGENT, steps, mode, user], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_the_agent_sees_the_same_devices_through_nvidia_ml_py_as_through_the_fleets_nvml(
    library: Path, tmp_path: Path
) -> None:
    real = _agent(library, tmp_path / "limits", "restore")
    sim = SimulatedNvml(H100, GPUS)
    agent = CapApplier(sim)
    expected = [
        [[r.index, r.requested_mw, r.enforced_mw, r.default_mw, bool(r.error)] for r in agent.apply(s, 0.0)]
        for s in STEPS[:-1]
    ]
    assert real["count"] == sim.device_count() == GPUS
    assert real["constraints"] == list(sim.constraints_mw(0)) == [200_000, 700_000]
    assert real["usage"] == sim.power_usage_mw(0)
    assert real["steps"] == expected
    assert real["steps"][0][0][2] == 350_000 and real["steps"][1][1][4], "a cap below the floor is refused"
    with pytest.raises(NvmlError, match="Invalid Argument"):
        sim.set_limit_mw(1, 1)
    assert real["refused"] is not None and "Invalid Argument" in real["refused"]
    assert real["left"] == [700_000, 700_000], "an empty cap set restores every default"


def test_a_limit_outlives_the_agent_process_until_the_default_is_set_back(library: Path, tmp_path: Path) -> None:
    state = tmp_path / "limits"
    first = _agent(library, state, "leave")
    assert first["found"] == [700_000, 700_000]
    assert first["left"] == [700_000, 450_000]
    # A driver keeps a limit after the process that set it exits; the next agent finds it and puts defaults back.
    second = _agent(library, state, "restore")
    assert second["found"] == [700_000, 450_000]
    assert second["left"] == [700_000, 700_000]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the agent as another user")
def test_setting_a_limit_needs_root(library: Path, tmp_path: Path) -> None:
    out = _agent(library, tmp_path / "limits", "leave", user="65534")
    assert all(r[4] for r in out["steps"][0] if r[1] is not None), "NVML refuses a non-root caller"
    assert "Insufficient Permissions" in (out["refused"] or "")
