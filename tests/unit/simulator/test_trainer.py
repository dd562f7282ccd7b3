"""Trainer mode under the real trainer's contract: progress on virtual time, interval and SIGTERM checkpoints with a
`latest` pointer, resuming from it, the ebbtide_trainer_* metrics, power limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from simulator.engine import TRAINER_KEY, EngineConfigError, parse_args
from simulator.engine.server import create_app, shutdown
from simulator.engine.trainer import read_latest
from tests.unit.simulator.engine_support import Served, engine_argv, sample, serve_engine


def trainer_argv(*extra: str, steps: int = 40) -> list[str]:
    return engine_argv(
        "llama-3-8b", "H100", 1000, "--mode", "trainer", "--total-steps", str(steps), "--step-seconds", "1", *extra
    )


def folder(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


async def wait_done(e: Served, attempts: int = 500) -> dict[str, Metric]:
    for _ in range(attempts):
        families = await e.metrics()
        if sample(families, "ebbtide_trainer_done") == 1:
            return families
        await asyncio.sleep(0.01)
    raise AssertionError("trainer did not finish")


async def test_trainer_steps_to_completion_checkpoints_by_interval_and_writes_the_adapter(tmp_path: Path) -> None:
    async with serve_engine(trainer_argv("--checkpoint-dir", str(tmp_path), "--checkpoint-interval-steps", "15")) as e:
        families = await wait_done(e)
        async with e.http() as http:
            assert (await http.get("/health")).status_code == 200
    assert sample(families, "ebbtide_trainer_step") == 40 and sample(families, "ebbtide_trainer_total_steps") == 40
    assert sample(families, "ebbtide_trainer_checkpoint_step") == 40
    assert sample(families, "ebbtide_trainer_resumed_from_step") == -1
    assert folder(tmp_path) == [
        "adapter",
        "checkpoint-00000015",
        "checkpoint-00000030",
        "checkpoint-00000040",
        "latest",
    ]
    assert read_latest(tmp_path) == 40 and (tmp_path / "adapter" / "adapter_config.json").is_file()


async def test_sigterm_checkpoints_now_and_the_next_start_resumes_from_latest(tmp_path: Path) -> None:
    argv = trainer_argv("--checkpoint-dir", str(tmp_path), steps=100_000)
    async with serve_engine(argv) as e:
        await asyncio.sleep(0.05)
        await shutdown(e.app)  # what SIGTERM does
        stopped_at = e.app[TRAINER_KEY].step
        families = await e.metrics()
    assert stopped_at > 0 and read_latest(tmp_path) == stopped_at
    assert sample(families, "ebbtide_trainer_checkpoint_step") == stopped_at
    async with serve_engine(argv) as e:
        families = await e.metrics()
        loss = e.app[TRAINER_KEY].loss
    assert sample(families, "ebbtide_trainer_resumed_from_step") == stopped_at
    assert sample(families, "ebbtide_trainer_step") >= stopped_at
    assert sample(families, "ebbtide_trainer_loss") == pytest.approx(loss, rel=0.05)
    assert parse_args(argv).start_step == stopped_at


def test_no_admin_checkpoint_or_progress_routes_remain() -> None:
    app = create_app(parse_args(trainer_argv()))
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert not {"/admin/progress", "/admin/checkpoint"} & paths


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
