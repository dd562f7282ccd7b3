"""Trainer mode: progress on virtual time, checkpoint markers, resuming, power limits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from simulator.engine import TRAINER_KEY, EngineConfigError, parse_args
from tests.unit.simulator.engine_support import engine_argv, sample, serve_engine


def trainer_argv(*extra: str, steps: int = 40) -> list[str]:
    return engine_argv(
        "llama-3-8b", "H100", 1000, "--mode", "trainer", "--total-steps", str(steps), "--step-seconds", "1", *extra
    )


def read_marker(path: Path) -> dict[str, object]:
    return dict(json.loads(path.read_text()))


async def wait_done(http: httpx.AsyncClient, attempts: int = 500) -> dict[str, object]:
    for _ in range(attempts):
        progress = (await http.get("/admin/progress")).json()
        if progress["done"]:
            return dict(progress)
        await asyncio.sleep(0.01)
    raise AssertionError("trainer did not finish")


async def test_trainer_steps_to_completion_and_exposes_metrics() -> None:
    async with serve_engine(trainer_argv()) as e, e.http() as http:
        progress = await wait_done(http)
        assert (progress["step"], progress["total"]) == (40, 40)
        assert (await http.get("/health")).status_code == 200
        families = await e.metrics()
    assert sample(families, "trainer_step", model_name="llama-3-8b") == 40


async def test_checkpoint_writes_a_marker_that_resume_reads(tmp_path: Path) -> None:
    async with serve_engine(trainer_argv("--checkpoint-dir", str(tmp_path), steps=100_000)) as e, e.http() as http:
        await asyncio.sleep(0.02)
        r = (await http.post("/admin/checkpoint", json={})).json()
        named = (await http.post("/admin/checkpoint", json={"path": "pre-eviction/ckpt.json"})).json()
        progress = (await http.get("/admin/progress")).json()
    path = Path(r["path"])
    assert path.parent == tmp_path and read_marker(path)["step"] == r["step"] > 0
    assert Path(named["path"]) == tmp_path / "pre-eviction" / "ckpt.json"
    assert progress["last_checkpoint"] == named["path"]
    resumed = parse_args(trainer_argv("--resume-from", named["path"], steps=100_000))
    assert resumed.start_step == named["step"]


async def test_checkpoint_refuses_paths_outside_the_directory_and_missing_directory(tmp_path: Path) -> None:
    async with serve_engine(trainer_argv("--checkpoint-dir", str(tmp_path))) as e, e.http() as http:
        escape = await http.post("/admin/checkpoint", json={"path": "../evil.json"})
    assert escape.status_code == 400 and "relative" in escape.json()["error"]["message"]
    async with serve_engine(trainer_argv()) as e, e.http() as http:
        missing = await http.post("/admin/checkpoint")
    assert missing.status_code == 400 and "--checkpoint-dir" in missing.json()["error"]["message"]


def test_resume_from_an_unreadable_marker_is_a_start_up_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(EngineConfigError, match="--resume-from"):
        parse_args(trainer_argv("--resume-from", str(bad)))


async def test_power_cap_stretches_training_steps_along_the_compute_curve() -> None:
    async with serve_engine(trainer_argv()) as e:
        trainer = e.app[TRAINER_KEY]
        assert trainer.step_seconds == 1.0
        trainer.set_power_limit(350)  # what the fleet's simulated NVML does for the trainer's GPUs
        assert trainer.perf.power_limit_w == 350
        slowdown = 1 / e.cfg.perf_model().with_power_limit(350).compute_speed
        assert trainer.step_seconds == pytest.approx(slowdown) and slowdown > 1.2
