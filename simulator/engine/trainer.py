"""A simulated LoRA fine-tuning worker: steps on a virtual clock, checkpoints on request, resumes from one.

Training is compute-bound, so a power limit stretches each step by the compute slowdown of the cap
curve (catalogue/power.py); a new limit takes effect from the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path, PurePosixPath

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from simulator.engine.clock import Clock, ScaledClock
from simulator.engine.config import EngineConfig

CHECKPOINT_KIND = "ebbtide-sim-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint request the trainer cannot honour (no directory configured, path escapes it)."""


class Trainer:
    """Progress, checkpoints and power limit of one simulated fine-tuning worker."""

    def __init__(self, cfg: EngineConfig, clock: Clock | None = None, registry: CollectorRegistry | None = None):
        self.cfg = cfg
        self.clock: Clock = clock if clock is not None else ScaledClock(cfg.time_scale)
        self.perf = cfg.perf_model()
        self.step = cfg.start_step
        self.total = cfg.total_steps
        self.last_checkpoint: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["model_name"]
        name = cfg.served_model_name
        self._step_gauge = Gauge("trainer_step", "Training steps completed.", labels, registry=self.registry)
        self._total_gauge = Gauge("trainer_total_steps", "Training steps in the run.", labels, registry=self.registry)
        self._checkpoints = Counter(
            "trainer_checkpoints", "Checkpoints written.", labels, registry=self.registry
        ).labels(name)
        self._step_gauge.labels(name).set(self.step)
        self._total_gauge.labels(name).set(self.total)

    @property
    def done(self) -> bool:
        """Whether every step has run."""
        return self.step >= self.total

    @property
    def step_seconds(self) -> float:
        """Virtual seconds one step takes under the current power limit."""
        return self.cfg.step_seconds / self.perf.compute_speed

    async def start(self) -> None:
        """Start stepping on the running event loop."""
        self._task = asyncio.create_task(self._run(), name=f"sim-trainer-{self.cfg.served_model_name}")

    async def stop(self) -> None:
        """Stop stepping."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        t = self.clock.now()
        while not self.done:
            t += self.step_seconds
            await self.clock.sleep_until(t)
            self.step += 1
            self._step_gauge.labels(self.cfg.served_model_name).set(self.step)

    def progress(self) -> dict[str, object]:
        """{"step", "total", "done"} plus the last checkpoint written."""
        return {"step": self.step, "total": self.total, "done": self.done, "last_checkpoint": self.last_checkpoint}

    def set_power_limit(self, watts: float | None) -> None:
        """Apply a per-GPU power limit (None restores TDP); raises PowerLimitError when out of range."""
        self.perf = self.perf.with_power_limit(watts)

    def _checkpoint_path(self, requested: str | None) -> Path:
        if self.cfg.checkpoint_dir is None:
            raise CheckpointError("no --checkpoint-dir configured; cannot write a checkpoint")
        name = requested or f"checkpoint-{self.step:08d}.json"
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise CheckpointError(f"checkpoint path {name!r} must be relative to --checkpoint-dir")
        return Path(self.cfg.checkpoint_dir, *rel.parts)

    async def checkpoint(self, requested: str | None = None) -> dict[str, object]:
        """Write a marker {"step", ...} under --checkpoint-dir and return {"step", "path"}."""
        path = self._checkpoint_path(requested)
        step = self.step
        marker = {
            "kind": CHECKPOINT_KIND,
            "step": step,
            "total": self.total,
            "model": self.cfg.model_arg,
            "virtual_time_s": round(self.clock.now(), 6),
        }
        await asyncio.to_thread(_write_atomically, path, json.dumps(marker, indent=2) + "\n")
        self.last_checkpoint = str(path)
        self._checkpoints.inc()
        return {"step": step, "path": str(path)}

    def render_metrics(self) -> bytes:
        """The Prometheus text exposition of the trainer's metrics."""
        return generate_latest(self.registry)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
