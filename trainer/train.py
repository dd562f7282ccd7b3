"""The training loop: LoRA with peft on a causal LM, checkpoints by step interval, by time and on SIGTERM.

Batches are a function of (seed, step), and the optimizer, scheduler and RNG states travel in each checkpoint, so a
resumed run computes the same losses as one that was never interrupted.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

from trainer.checkpoints import (
    Checkpoint,
    CheckpointError,
    publish_folder,
    read_latest,
    remove_partial,
    write_checkpoint,
)
from trainer.config import ConfigError, TrainerConfig, parse
from trainer.data import DatasetError, Example, read_records, tokenize
from trainer.metrics import Metrics

log = logging.getLogger("trainer")
EXIT_BAD_INPUT = 2  # the job's input cannot be used: retrying will not help
# The kubelet mounts this file into the container; elsewhere (a local run) it is written only where asked to.
TERMINATION_LOG_ENV = "EBBTIDE_TERMINATION_LOG"
OPTIMIZER_STATE = "trainer_state.pt"


class InputError(ValueError):
    """Bad input, named by its flag: the termination message starts "--flag: " (docs/finetuning.md)."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


def batch_indices(seed: int, step: int, size: int, batch: int) -> list[int]:
    """The examples of one step: epoch-wise seeded shuffles, so any step's batch is known without replay."""
    out = []
    for k in range(step * batch, (step + 1) * batch):
        epoch, pos = divmod(k, size)
        order = list(range(size))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[pos])
    return out


class Run:
    """Model, optimizer and data of one worker, and the checkpoints it writes."""

    def __init__(self, cfg: TrainerConfig, metrics: Metrics) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

        self.cfg, self.metrics, self.torch = cfg, metrics, torch
        torch.manual_seed(cfg.seed)
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
            base = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise InputError("--base-model", f"cannot load a model from {cfg.base_model}: {exc}") from exc
        try:
            self.examples: list[Example] = tokenize(read_records(cfg.dataset), tokenizer, cfg.max_length)
        except DatasetError as exc:
            raise InputError("--dataset", str(exc)) from exc
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, lora)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
        warmup = max(1, cfg.max_steps // 10)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, cfg.max_steps)
        self.step = 0
        self.last_loss = math.nan
        self.last_checkpoint: Checkpoint | None = None

    def resume(self) -> Checkpoint | None:
        """Load the latest checkpoint, if any: adapter weights, optimizer, scheduler, RNG; the step continues."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        torch = self.torch
        remove_partial(self.cfg.checkpoint_dir)
        latest = read_latest(self.cfg.checkpoint_dir)
        if latest is None:
            return None
        weights = load_file(str(latest.path / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.model, weights)
        state = torch.load(latest.path / OPTIMIZER_STATE, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.step = latest.step
        self.last_loss = float(latest.state.get("loss", math.nan))  # type: ignore[arg-type]
        self.last_checkpoint = latest
        return latest

    def train_step(self) -> float:
        torch = self.torch
        batch = [
            self.examples[i] for i in batch_indices(self.cfg.seed, self.step, len(self.examples), self.cfg.batch_size)
        ]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.tensor([e.input_ids + [self.pad] * (width - len(e.input_ids)) for e in batch])
        labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in batch])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch])
        loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.last_loss = float(loss.item())
        return self.last_loss

    def checkpoint(self, why: str) -> Checkpoint:
        """Write checkpoint-<step> and point `latest` at it."""
        torch = self.torch
        if self.last_checkpoint is not None and self.last_checkpoint.step == self.step:
            return self.last_checkpoint

        def fill(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate(),
                },
                tmp / OPTIMIZER_STATE,
            )

        t0 = time.monotonic()
        state: dict[str, object] = {"total": self.cfg.max_steps, "loss": self.last_loss, "why": why}
        self.last_checkpoint = write_checkpoint(self.cfg.checkpoint_dir, self.step, state, fill)
        self.metrics.checkpointed(self.step)
        log.info(
            "checkpoint at step %d (%s) in %.2f s: %s", self.step, why, time.monotonic() - t0, self.last_checkpoint.path
        )
        return self.last_checkpoint

    def export_adapter(self) -> Path:
        """The final adapter in PEFT format (adapter_config.json, adapter_model.safetensors), renamed in whole."""
        final = self.cfg.adapter_dir
        publish_folder(lambda tmp: self.model.save_pretrained(tmp), final)
        return final


def _terminated(message: str) -> None:
    """Kubernetes shows /dev/termination-log as the container's termination message."""
    path = Path(os.environ.get(TERMINATION_LOG_ENV, "/dev/termination-log"))
    if TERMINATION_LOG_ENV not in os.environ and not path.is_file():
        return
    try:
        path.write_text(message[:4000])
    except OSError:
        pass


STEP_DELAY_ENV = "EBBTIDE_TRAINER_FAULT_STEP_DELAY_S"


def train(cfg: TrainerConfig, stop: threading.Event, metrics: Metrics) -> int:
    """Run to max-steps or until `stop` (SIGTERM): checkpoint, then return the exit code."""
    run = Run(cfg, metrics)
    resumed = run.resume()
    metrics.started(run.step, cfg.max_steps, resumed.step if resumed else None)
    log.info(
        "starting at step %d of %d (%s)",
        run.step,
        cfg.max_steps,
        f"resumed from {resumed.path}" if resumed else "fresh",
    )
    last_time = time.monotonic()
    # Fault injection for tests on fast machines: a pause after each step (SIGTERM still ends it at once), so that
    # a few dozen steps of a tiny model last long enough to be observed and interrupted.
    step_delay_s = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
    while run.step < cfg.max_steps:
        if stop.is_set():
            ck = run.checkpoint("SIGTERM")
            _terminated(f"checkpoint step {ck.step} at {ck.path}")
            log.info("SIGTERM: checkpointed step %d, exiting", ck.step)
            return 0
        loss = run.train_step()
        metrics.stepped(run.step, loss)
        log.info("step %d/%d loss %.6f", run.step, cfg.max_steps, loss)
        every = cfg.checkpoint_interval_steps
        if (every and run.step % every == 0) or time.monotonic() - last_time >= cfg.checkpoint_interval_seconds:
            run.checkpoint("interval")
            last_time = time.monotonic()
        if step_delay_s > 0:
            stop.wait(step_delay_s)
    run.checkpoint("final")
    adapter = run.export_adapter()
    metrics.finished()
    _terminated(f"adapter {cfg.adapter_name} at {adapter} after {run.step} steps")
    log.info("done: adapter %s at %s", cfg.adapter_name, adapter)
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        cfg = parse(argv)
    except ConfigError as exc:
        log.error("%s", exc)
        _terminated(str(exc))
        return EXIT_BAD_INPUT
    stop = threading.Event()
    # SIGTERM is "checkpoint now, then exit": the loop sees it between two optimizer steps.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    metrics = Metrics(cfg.host, cfg.port)
    try:
        return train(cfg, stop, metrics)
    except InputError as exc:
        log.error("%s", exc)
        _terminated(str(exc))
        return EXIT_BAD_INPUT
    except CheckpointError as exc:
        log.error("%s", exc)
        _terminated(f"--checkpoint-dir: {exc}")
        return EXIT_BAD_INPUT
    finally:
        metrics.close()
