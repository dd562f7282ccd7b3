"""Checkpoint or delete: a preemptible job is asked first, its workers are sent SIGTERM (checkpoint now, then exit),
and it is evicted once its checkpoint is read back, once the workers are gone, or at the deadline; any other victim
is evicted at once."""

from __future__ import annotations

import pytest

from packer import CheckpointAction, CheckpointState, checkpoint_step

DEADLINE = 300.0


def test_first_look_at_a_preemptible_job_requests_a_checkpoint_with_its_deadline() -> None:
    d = checkpoint_step(CheckpointState(checkpoint_first=True), now=100.0, deadline_s=DEADLINE)
    assert d.action == CheckpointAction.REQUEST_CHECKPOINT
    assert d.deadline == 100.0 + DEADLINE


def test_a_request_without_a_deadline_waits_for_the_checkpoint() -> None:
    d = checkpoint_step(CheckpointState(checkpoint_first=True), now=100.0)
    assert d.action == CheckpointAction.REQUEST_CHECKPOINT and d.deadline is None
    standing = CheckpointState(True, requested=True, deadline=None)
    assert checkpoint_step(standing, now=1e9).action == CheckpointAction.SIGNAL
    signalled = CheckpointState(True, requested=True, deadline=None, signalled=True)
    assert checkpoint_step(signalled, now=1e9).action == CheckpointAction.WAIT


def test_a_standing_request_signals_the_workers_then_waits_before_the_deadline() -> None:
    s = CheckpointState(True, requested=True, deadline=400.0)
    d = checkpoint_step(s, now=160.0)
    assert d.action == CheckpointAction.SIGNAL and "SIGTERM" in d.reason
    s = CheckpointState(True, requested=True, deadline=400.0, signalled=True)
    assert checkpoint_step(s, now=160.0).action == CheckpointAction.WAIT


def test_workers_that_exit_after_sigterm_end_the_wait() -> None:
    s = CheckpointState(True, requested=True, deadline=400.0, trainer_running=False, signalled=True)
    d = checkpoint_step(s, now=161.0)
    assert d.action == CheckpointAction.EVICT and "resumes" in d.reason


def test_confirmed_checkpoint_allows_eviction_before_the_deadline() -> None:
    s = CheckpointState(True, requested=True, deadline=400.0, confirmed=True)
    d = checkpoint_step(s, now=151.0)
    assert d.action == CheckpointAction.EVICT and "confirmed" in d.reason


def test_a_trainer_that_is_not_running_cannot_checkpoint_so_it_is_evicted() -> None:
    s = CheckpointState(True, requested=True, deadline=400.0, trainer_running=False)
    d = checkpoint_step(s, now=151.0)
    assert d.action == CheckpointAction.EVICT and "no running trainer" in d.reason


def test_deadline_forces_eviction_without_checkpoint() -> None:
    s = CheckpointState(True, requested=True, deadline=400.0)
    d = checkpoint_step(s, now=400.0)
    assert d.action == CheckpointAction.EVICT and "deadline" in d.reason


def test_gangs_without_handshake_are_evicted_directly() -> None:
    s = CheckpointState(checkpoint_first=False)
    assert checkpoint_step(s, now=0.0, deadline_s=DEADLINE).action == CheckpointAction.EVICT


def test_never_evicts_before_requesting_and_never_waits_past_the_deadline() -> None:
    # Walk the machine through time the way the shells do and check the order of actions.
    state = CheckpointState(checkpoint_first=True)
    actions = []
    for now in range(0, 1000, 50):
        d = checkpoint_step(state, now=float(now), deadline_s=DEADLINE)
        actions.append(d.action)
        if d.action == CheckpointAction.REQUEST_CHECKPOINT:
            state = CheckpointState(True, requested=True, deadline=d.deadline)
        if d.action == CheckpointAction.SIGNAL:
            state = CheckpointState(True, requested=True, deadline=state.deadline, signalled=True)
        if d.action == CheckpointAction.EVICT:
            break
    waits = int(DEADLINE // 50) - 2  # requested at 0, signalled at 50, evicted at the deadline
    assert actions == [CheckpointAction.REQUEST_CHECKPOINT, CheckpointAction.SIGNAL] + [
        CheckpointAction.WAIT
    ] * waits + [CheckpointAction.EVICT]


def test_rejects_a_non_positive_deadline() -> None:
    with pytest.raises(ValueError):
        checkpoint_step(CheckpointState(True), now=0.0, deadline_s=0.0)
