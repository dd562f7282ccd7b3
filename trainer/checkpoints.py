"""The checkpoint store: one folder per checkpoint and a `latest` pointer, both replaced only by rename.

A checkpoint is written into a temporary folder, every file and the folder are fsynced, and only then is it
renamed to checkpoint-<step>; `latest` (a one-line file naming that folder) is then replaced the same way. A
process killed at any point leaves `latest` naming a complete checkpoint, or no `latest` at all.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LATEST = "latest"
STATE = "state.json"
TMP_PREFIX = ".tmp-"
# Fault injection for tests of a kill mid-checkpoint: seconds to wait between writing a checkpoint and naming it.
PAUSE_ENV = "EBBTIDE_TRAINER_FAULT_CHECKPOINT_PAUSE_S"


class CheckpointError(RuntimeError):
    """`latest` names something that is not a complete checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk."""

    path: Path
    step: int
    state: dict[str, object]


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync(path)
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _fsync(path)
    _fsync(folder)


def publish_folder(fill: Callable[[Path], None], final: Path) -> None:
    """Write a folder by `fill(tmp)` and rename it to `final` once durable; an existing `final` is kept."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    _fsync_tree(tmp)
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if pause > 0:
        time.sleep(pause)
    if final.exists():
        # The same step checkpointed twice (SIGTERM right after an interval checkpoint): the first one stands.
        shutil.rmtree(tmp)
        return
    os.rename(tmp, final)
    _fsync(final.parent)


def _replace_file(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def write_checkpoint(root: Path, step: int, state: dict[str, object], fill: Callable[[Path], None]) -> Checkpoint:
    """Write checkpoint-<step> (its files by `fill`, plus state.json) and point `latest` at it."""
    final = root / checkpoint_name(step)

    def fill_all(tmp: Path) -> None:
        fill(tmp)
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")

    publish_folder(fill_all, final)
    _replace_file(root / LATEST, final.name + "\n")
    return Checkpoint(final, step, {**state, "step": step})


def read_latest(root: Path) -> Checkpoint | None:
    """The checkpoint `latest` names; None when there is none yet."""
    pointer = root / LATEST
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    path = root / name
    try:
        state = json.loads((path / STATE).read_text())
        return Checkpoint(path, int(state["step"]), state)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{pointer} names {name!r}, which is not a complete checkpoint: {exc}") from exc


def remove_partial(root: Path) -> list[Path]:
    """Remove the temporary folders a killed writer left (never a named checkpoint); returns what went."""
    gone = [p for p in root.glob(f"{TMP_PREFIX}*") if p.exists()] if root.is_dir() else []
    for p in gone:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return gone
