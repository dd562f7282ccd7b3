"""A simulated LoRA fine-tuning worker under the real trainer's contract (docs/finetuning.md): steps on a virtual
clock, checkpoints every --checkpoint-interval-steps and on SIGTERM into --checkpoint-dir (a checkpoint folder, then
the `latest` pointer, each by rename), resumes from `latest` on start, exports the ebbtide_trainer_* metrics and
writes an adapter folder when done.

Training is compute-bound, so a power limit stretches each step by the compute slowdown of the cap
curve (catalogue/power.py); a new limit takes effect from the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from simulator.engine.clock import Clock, ScaledClock
from simulator.engine.config import EngineConfig

CHECKPOINT_KIND = "ebbtide-sim-checkpoint"
LATEST = "latest"
STATE = "state.json"


class Trainer:
    """Progress, checkpoints and power limit of one simulated fine-tuning worker."""

    def __init__(self, cfg: EngineConfig, clock: Clock | None = None, registry: CollectorRegistry | None = None):
        self.cfg = cfg
        self.clock: Clock = clock if clock is not None else ScaledClock(cfg.time_scale)
        self.perf = cfg.perf_model()
        self.step = cfg.start_step
        self.total = cfg.total_steps
        self.last_checkpoint: str | None = None
        self.checkpoint_step = cfg.start_step if cfg.resumed else -1
        self._task: asyncio.Task[None] | None = None
        self.registry = registry if registry is not None else CollectorRegistry()

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=self.registry)

        self._step = gauge("ebbtide_trainer_step", "Optimizer steps completed.")
        self._total = gauge("ebbtide_trainer_total_steps", "Optimizer steps in the run.")
        self._checkpoint = gauge("ebbtide_trainer_checkpoint_step", "Step of the latest complete checkpoint.")
        self._resumed = gauge("ebbtide_trainer_resumed_from_step", "Step this process resumed from (-1: fresh).")
        self._loss = gauge("ebbtide_trainer_loss", "Training loss of the last step.")
        self._done = gauge("ebbtide_trainer_done", "1 once every step ran and the adapter is written.")
        self._step.set(self.step)
        self._total.set(self.total)
        self._checkpoint.set(self.checkpoint_step)
        self._resumed.set(cfg.start_step if cfg.resumed else -1)
        self._loss.set(self.loss)
        self.finished = False

    @property
    def done(self) -> bool:
        """Whether every step has run and the adapter is written."""
        return self.finished

    @property
    def loss(self) -> float:
        """A smooth falling loss curve, a function of the step (so a resumed run continues it)."""
        return 0.4 + 2.0 * math.exp(-3.0 * self.step / max(1, self.total))

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

    async def terminate(self) -> None:
        """SIGTERM: stop after the current step, checkpoint now (unless finished), then the process may exit."""
        await self.stop()
        if not self.finished and self.cfg.checkpoint_dir is not None:
            await self.checkpoint()

    async def _run(self) -> None:
        t = self.clock.now()
        every = self.cfg.checkpoint_interval_steps
        while self.step < self.total:
            t += self.step_seconds
            await self.clock.sleep_until(t)
            self.step += 1
            self._step.set(self.step)
            self._loss.set(self.loss)
            if every and self.step % every == 0 and self.cfg.checkpoint_dir is not None:
                await self.checkpoint()
        if self.cfg.checkpoint_dir is not None:
            await self.checkpoint()
        if self.cfg.checkpoint_dir is not None and self.cfg.rank == 0:
            await asyncio.to_thread(_write_adapter, Path(self.cfg.checkpoint_dir) / "adapter", self.cfg)
        self.finished = True
        self._done.set(1)

    def set_power_limit(self, watts: float | None) -> None:
        """Apply a per-GPU power limit (None restores TDP); raises PowerLimitError when out of range."""
        self.perf = self.perf.with_power_limit(watts)

    async def checkpoint(self) -> dict[str, object]:
        """Write checkpoint-<step>/state.json and point `latest` at it (rank 0 only); returns {"step", "path"}."""
        assert self.cfg.checkpoint_dir is not None
        step = self.step
        if self.cfg.rank != 0:
            return {"step": step, "path": None}
        if step == self.checkpoint_step and self.last_checkpoint is not None:
            return {"step": step, "path": self.last_checkpoint}
        marker = {
            "kind": CHECKPOINT_KIND,
            "step": step,
            "total": self.total,
            "model": self.cfg.model_arg,
            "loss": self.loss,
            "virtual_time_s": round(self.clock.now(), 6),
        }
        path = await asyncio.to_thread(write_checkpoint, Path(self.cfg.checkpoint_dir), step, marker)
        self.last_checkpoint = str(path)
        self.checkpoint_step = step
        self._checkpoint.set(step)
        return {"step": step, "path": str(path)}

    def render_metrics(self) -> bytes:
        """The Prometheus text exposition of the trainer's metrics."""
        return generate_latest(self.registry)


def write_checkpoint(root: Path, step: int, marker: dict[str, object]) -> Path:
    """checkpoint-<step> written under a temporary name and renamed, then `latest` replaced by rename."""
    final = root / f"checkpoint-{step:08d}"
    root.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        (tmp / STATE).write_text(json.dumps(marker, indent=2) + "\n")
        os.replace(tmp, final)
    pointer = root / f".tmp-{LATEST}-{os.getpid()}"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, root / LATEST)
    return final


def read_latest(root: Path) -> int | None:
    """The step of the checkpoint `latest` names in `root`; None when there is none."""
    try:
        name = (root / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return int(json.loads((root / name / STATE).read_text())["step"])


def _write_adapter(folder: Path, cfg: EngineConfig) -> None:
    """A stand-in adapter in PEFT's layout: adapter_config.json (the simulated engine checks that it is there)."""
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "base_model_name_or_path": cfg.model_arg, "r": 16, "simulated": True}
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if folder.exists():
        return
    os.replace(tmp, folder)
