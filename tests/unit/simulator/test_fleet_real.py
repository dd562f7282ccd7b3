"""The fleet's real-engine pods: the operator's vLLM command line turned into the node's, the readiness probe and
environment read as a kubelet reads them, kwok's stages for the real-engine tier, and the kubelet's SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from controllers.planners.engines import PodRole, serving_command, trainer_command
from crds.finetunejob import FineTuneJobSpec
from crds.llmservice import LLMServiceSpec
from simulator.fleet.real import (
    RealEngineError,
    RealProcess,
    container_env,
    readiness_probe,
    trainer_argv,
    vllm_argv,
)
from tests.kube import ROOT

VLLM = Path("venv/bin/vllm")


def spec(**engine: object) -> LLMServiceSpec:
    return LLMServiceSpec.model_validate(
        {
            "model": {"name": "tiny-llama", "source": "pvc://tiny-llama-v1", "parametersB": 0.001},
            "engine": {"type": "vllm", "port": 8000, **engine},
            "gpu": {"count": 1, "types": ["L4"]},
        }
    )


def test_the_operators_vllm_command_runs_with_the_nodes_binary_model_folder_and_port(tmp_path: Path) -> None:
    (tmp_path / "tiny-llama-v1").mkdir()
    command, args = serving_command(spec(args=["--dtype", "float32"]), PodRole("server", 0, 1))
    argv = vllm_argv(command, args, VLLM, tmp_path, 41234)
    assert argv[:3] == [str(VLLM), "serve", str(tmp_path / "tiny-llama-v1")]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "41234"
    assert argv.count("--port") == 1
    # Everything else is the pod's own: served name, parallelism, the service's engine args.
    assert argv[argv.index("--served-model-name") + 1] == "tiny-llama"
    assert argv[-2:] == ["--dtype", "float32"] and "--tensor-parallel-size" in argv


def test_a_model_missing_from_the_models_folder_is_refused_by_name(tmp_path: Path) -> None:
    command, args = serving_command(spec(), PodRole("server", 0, 1))
    with pytest.raises(RealEngineError, match="tiny-llama-v1 missing"):
        vllm_argv(command, args, VLLM, tmp_path, 1)


def test_multi_node_ray_pods_are_not_run_as_real_engines(tmp_path: Path) -> None:
    command, args = serving_command(spec(), PodRole("leader", 0, 2, "x-0.x-pods"))
    with pytest.raises(RealEngineError, match="single-node"):
        vllm_argv(command, args, VLLM, tmp_path, 1)


def test_readiness_probe_and_environment_come_from_the_pod() -> None:
    container = {
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3},
        "env": [
            {"name": "EBBTIDE_SERVICE", "value": "chat"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GPU", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['ebbtide.dev/gpu']"}}},
        ],
    }
    pod = {"metadata": {"name": "chat-0", "namespace": "ns", "annotations": {"ebbtide.dev/gpu": "L4"}}}
    probe = readiness_probe(container)
    assert (probe.path, probe.period_s, probe.failure_threshold) == ("/health", 5.0, 3)
    env = container_env(container, pod)
    assert (env["EBBTIDE_SERVICE"], env["POD_NAME"], env["GPU"]) == ("chat", "chat-0", "L4")
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"  # servers sharing this machine's cores must not all pin core 0


def test_kwok_leaves_vllm_and_trainer_pods_to_the_fleet_only_in_a_real_engine_cluster(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "hack"))
    try:
        import cluster  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    plain = cluster.kwok_stages(tmp_path, real_engines=False).read_text()
    real = cluster.kwok_stages(tmp_path, real_engines=True).read_text()
    assert "- 'vllm'" not in plain
    ready_stage = real.split("name: pod-ready")[1].split("---")[0]
    assert "- 'simulated'\n      - 'vllm'\n      - 'peft'" in ready_stage
    assert real.replace("\n      - 'vllm'\n      - 'peft'", "", 1) == plain


async def test_sigterm_goes_to_the_main_process_and_sigkill_follows_the_grace_period(tmp_path: Path) -> None:
    # A main process that ignores SIGTERM, as an engine busy finishing its requests may: killed after the grace.
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    proc = await RealProcess.start([sys.executable, "-c", stubborn], {}, tmp_path / "p.log")
    await asyncio.sleep(1.0)
    t0 = asyncio.get_running_loop().time()
    assert await proc.terminate(grace_s=1.0) is None
    assert 1.0 <= asyncio.get_running_loop().time() - t0 < 10 and proc.exited()
    # One that exits on SIGTERM reports its own exit code well within the grace.
    polite = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); time.sleep(60)"
    proc = await RealProcess.start([sys.executable, "-c", polite], {}, tmp_path / "q.log")
    await asyncio.sleep(1.0)
    assert await proc.terminate(grace_s=30.0) == 3


def test_a_trainer_pod_runs_the_real_trainer_with_the_nodes_paths_and_port() -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"name": "tiny", "source": "pvc://tiny-llama-v1", "parametersB": 0.01},
            "dataset": {"uri": "file:///data/tide.jsonl"},
            "checkpoint": {"storage": "pvc://ck", "intervalSteps": 8},
        }
    )
    command, args = trainer_command(spec, "job", "ns", 0, 1)
    argv = trainer_argv(command, args, Path("/venv/bin/python"), Path("/m"), Path("/state/ck/ns/job"), 4321)
    assert argv[:3] == ["/venv/bin/python", "-m", "trainer"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags["--base-model"] == "/m/tiny-llama-v1" and flags["--checkpoint-dir"] == "/state/ck/ns/job"
    assert (flags["--host"], flags["--port"], flags["--dataset"]) == ("127.0.0.1", "4321", "file:///data/tide.jsonl")
    with pytest.raises(RealEngineError, match="python -m trainer"):
        trainer_argv(["python", "-m", "simulator.engine"], [], Path("/p"), Path("/m"), Path("/c"), 1)
