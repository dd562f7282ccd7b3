"""The engine command line: the operator's flags parse, and bad start-up input names the flag and exits 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from simulator.engine import EngineConfigError, parse_args
from simulator.engine.config import GPU_PRODUCT_ENV
from tests.unit.simulator.engine_support import REPO_ROOT


def test_operator_command_line_parses() -> None:
    cfg = parse_args(
        [
            "--model", "meta-llama/Meta-Llama-3-70B", "--gpu", "NVIDIA-H100-80GB-HBM3", "--tensor-parallel", "4",
            "--pipeline-parallel", "1", "--expert-parallel", "1", "--host", "0.0.0.0", "--port", "8000",
            "--seed", "3", "--time-scale", "10", "--max-num-seqs", "128", "--max-num-batched-tokens", "4096",
            "--served-model-name", "llama", "--role", "both",
        ]
    )  # fmt: skip
    assert cfg.model.name == "llama-3-70b" and cfg.gpu.short_name == "H100"
    assert (cfg.tensor_parallel, cfg.seed, cfg.time_scale, cfg.max_num_seqs) == (4, 3, 10.0, 128)
    assert cfg.served_model_names == ("llama",) and cfg.max_model_len == 8192
    assert cfg.perf_model().num_gpus == 4


def test_uncatalogued_model_is_simulated_from_its_size() -> None:
    cfg = parse_args(
        ["--model", "acme/moe-100b", "--params-b", "100", "--architecture", "moe", "--experts", "16",
         "--active-params-b", "20", "--gpu", "H100", "--tensor-parallel", "4"]
    )  # fmt: skip
    assert cfg.model.name == "acme/moe-100b" and cfg.model.experts == 16
    assert cfg.model.active_params_b == 20 and cfg.served_model_names == ("acme/moe-100b",)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--model", "acme/unknown", "--gpu", "H100"], "--model"),
        (["--model", "llama-3-8b", "--gpu", "TPU-v5"], "--gpu"),
        (["--model", "x", "--params-b", "10", "--architecture", "moe", "--gpu", "H100"], "--experts"),
        (["--model", "llama-3-8b", "--gpu", "H100", "--expert-parallel", "2"], "--expert-parallel"),
        (["--model", "llama-3-70b", "--gpu", "L4"], "--gpu/--tensor-parallel"),
        (["--model", "llama-3-8b", "--gpu", "H100", "--max-model-len", "10000000"], "--max-model-len"),
        (["--model", "llama-3-8b", "--gpu", "H100", "--power-limit", "900"], "--power-limit"),
        (["--model", "llama-3-8b", "--gpu", "H100", "--time-scale", "0"], "--time-scale"),
        (["--model", "llama-3-8b", "--gpu", "H100", "--tensor-parallel", "two"], "--tensor-parallel"),
        (["--model", "llama-3-8b", "--gpu", "H100", "--mode", "trainer"], "--total-steps"),
        (["--model", "llama-3-8b", "--gpu", "H100", "--no-such-flag"], "--no-such-flag"),
        (["--gpu", "H100"], "--model"),
    ],
)
def test_bad_start_up_input_names_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(EngineConfigError, match=flag):
        parse_args(argv)


def test_gpu_auto_reads_the_node_product_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--model", "llama-3-8b", "--gpu", "auto"]
    monkeypatch.delenv(GPU_PRODUCT_ENV, raising=False)
    with pytest.raises(EngineConfigError, match="--gpu: 'auto' needs"):
        parse_args(argv)
    monkeypatch.setenv(GPU_PRODUCT_ENV, "NVIDIA-L40S")
    assert parse_args(argv).gpu.short_name == "L40S"


def test_trainer_mode_accepts_what_the_operator_generates() -> None:
    cfg = parse_args(
        ["--mode", "trainer", "--model", "llama-3-70b", "--params-b", "70", "--gpu", "H100", "--host", "0.0.0.0",
         "--port", "8080", "--total-steps", "1000", "--step-seconds", "2.5", "--checkpoint-dir", "/ckpt"]
    )  # fmt: skip
    assert (cfg.mode, cfg.total_steps, cfg.step_seconds, cfg.start_step) == ("trainer", 1000, 2.5, 0)


def test_module_exits_2_with_a_clear_message_and_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.engine", "--model", "acme/unknown", "--gpu", "H100"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--model: unknown model 'acme/unknown'" in proc.stderr
    assert "Traceback" not in proc.stderr
