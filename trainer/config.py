"""The trainer's command line: exactly the flags the FineTuneJob controller passes (controllers/planners/engines.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A command line the trainer refuses; the message names the flag (and so the job's field)."""


@dataclass(frozen=True)
class TrainerConfig:
    """One worker's run."""

    base_model: Path  # a local folder in Hugging Face format (spec.baseModel.source)
    dataset: Path  # a local JSONL file (spec.dataset.uri)
    method: str  # lora (spec.method)
    lora_rank: int
    lora_alpha: int
    learning_rate: float
    batch_size: int
    max_steps: int
    checkpoint_dir: Path  # spec.checkpoint.storage/<namespace>/<job>
    checkpoint_interval_steps: int  # 0: only the seconds interval and SIGTERM checkpoint
    checkpoint_interval_seconds: float
    adapter_name: str
    host: str
    port: int  # Prometheus /metrics
    rank: int
    world_size: int
    seed: int
    max_length: int

    @property
    def adapter_dir(self) -> Path:
        """Where the final adapter goes, in PEFT format (what vLLM's --lora-modules takes)."""
        return self.checkpoint_dir / "adapter"


def local_path(flag: str, value: str) -> Path:
    """A file:// URI or a plain path; other schemes are for a storage the trainer does not reach."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return Path(value)
    if scheme == "file":
        return Path("/" + rest.lstrip("/"))
    raise ConfigError(f"{flag}: {value!r} is not a local path; mount it and pass the path (or a file:// URI)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    p.add_argument("--base-model", required=True, help="folder of the base model (Hugging Face format)")
    p.add_argument("--dataset", required=True, help="JSONL file: {prompt, completion} or {text} per line")
    p.add_argument("--method", default="lora", help="lora (qlora needs bitsandbytes and a GPU: refused here)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--checkpoint-dir", required=True, help="checkpoints, the `latest` pointer and the adapter")
    p.add_argument("--checkpoint-interval-steps", type=int, default=0)
    p.add_argument("--checkpoint-interval-seconds", type=float, default=600.0)
    p.add_argument("--adapter-name", default="adapter", help="the adapter's name (spec.output.adapterName)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000, help="Prometheus /metrics")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=128, help="tokens per training sequence")
    return p


def parse(argv: list[str]) -> TrainerConfig:
    """A validated configuration, or ConfigError naming the flag."""
    ns = parser().parse_args(argv)
    if ns.method != "lora":
        raise ConfigError(f"--method: {ns.method!r} is not supported by this trainer (lora)")
    if ns.world_size != 1 or ns.rank != 0:
        raise ConfigError(f"--world-size: this trainer runs one worker, got {ns.world_size} (rank {ns.rank})")
    for flag, value in (
        ("--lora-rank", ns.lora_rank),
        ("--lora-alpha", ns.lora_alpha),
        ("--batch-size", ns.batch_size),
        ("--max-steps", ns.max_steps),
        ("--max-length", ns.max_length),
    ):
        if value < 1:
            raise ConfigError(f"{flag}: must be at least 1, got {value}")
    if ns.checkpoint_interval_steps < 0 or ns.checkpoint_interval_seconds <= 0:
        raise ConfigError("--checkpoint-interval-steps must be >= 0 and --checkpoint-interval-seconds > 0")
    return TrainerConfig(
        base_model=local_path("--base-model", ns.base_model),
        dataset=local_path("--dataset", ns.dataset),
        method=ns.method,
        lora_rank=ns.lora_rank,
        lora_alpha=ns.lora_alpha,
        learning_rate=ns.learning_rate,
        batch_size=ns.batch_size,
        max_steps=ns.max_steps,
        checkpoint_dir=local_path("--checkpoint-dir", ns.checkpoint_dir),
        checkpoint_interval_steps=ns.checkpoint_interval_steps,
        checkpoint_interval_seconds=ns.checkpoint_interval_seconds,
        adapter_name=ns.adapter_name,
        host=ns.host,
        port=ns.port,
        rank=ns.rank,
        world_size=ns.world_size,
        seed=ns.seed,
        max_length=ns.max_length,
    )
