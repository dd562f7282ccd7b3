"""The checkpoint store: `latest` only ever names a complete checkpoint."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from trainer.checkpoints import (
    LATEST,
    PAUSE_ENV,
    CheckpointError,
    checkpoint_name,
    read_latest,
    remove_partial,
    write_checkpoint,
)


def _weights(text: str):  # type: ignore[no-untyped-def]
    def fill(tmp: Path) -> None:
        (tmp / "weights.bin").write_text(text)

    return fill


def test_a_checkpoint_is_named_then_pointed_at(tmp_path: Path) -> None:
    assert read_latest(tmp_path) is None
    write_checkpoint(tmp_path, 5, {"loss": 1.5}, _weights("five"))
    write_checkpoint(tmp_path, 10, {"loss": 1.2}, _weights("ten"))
    latest = read_latest(tmp_path)
    assert latest is not None
    assert (latest.step, latest.state["loss"]) == (10, 1.2)
    assert (latest.path / "weights.bin").read_text() == "ten"
    assert (tmp_path / LATEST).read_text().strip() == checkpoint_name(10)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(5), checkpoint_name(10), LATEST]


def test_the_same_step_twice_keeps_the_first(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 7, {}, _weights("first"))
    write_checkpoint(tmp_path, 7, {}, _weights("second"))
    latest = read_latest(tmp_path)
    assert latest is not None and (latest.path / "weights.bin").read_text() == "first"
    assert not list(tmp_path.glob(".tmp-*"))


def _slow_writer(root: str) -> None:
    os.environ[PAUSE_ENV] = "30"
    write_checkpoint(Path(root), 20, {}, _weights("twenty"))


def test_a_kill_mid_checkpoint_leaves_the_previous_one_latest(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10, {}, _weights("ten"))
    proc = multiprocessing.get_context("fork").Process(target=_slow_writer, args=(str(tmp_path),))
    proc.start()
    deadline = time.monotonic() + 20
    while not list(tmp_path.glob(".tmp-checkpoint-*/state.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert list(tmp_path.glob(".tmp-checkpoint-*")), "the killed writer was mid-checkpoint"
    latest = read_latest(tmp_path)
    assert latest is not None and latest.step == 10
    assert [p.name for p in remove_partial(tmp_path)] and not list(tmp_path.glob(".tmp-*"))
    assert (tmp_path / checkpoint_name(10)).is_dir()


def test_a_pointer_to_an_incomplete_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-00000003").mkdir()
    (tmp_path / LATEST).write_text("checkpoint-00000003\n")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        read_latest(tmp_path)
