"""The checkpoint-before-evict handshake as a state machine: request, wait, then evict on confirmation or deadline."""

from __future__ import annotations

import pytest

from packer import CheckpointAction, CheckpointState, checkpoint_step

DEADLINE = 300.0


def test_first_step_requests_a_checkpoint() -> None:
    d = checkpoint_step(CheckpointState("ft", checkpoint_first=True), now=100.0, deadline_s=DEADLINE)
    assert d.action == CheckpointAction.REQUEST_CHECKPOINT


def test_waits_until_the_checkpoint_is_confirmed() -> None:
    s = CheckpointState("ft", checkpoint_first=True, requested_at=100.0)
    d = checkpoint_step(s, now=160.0, deadline_s=DEADLINE)
    assert d.action == CheckpointAction.WAIT
    assert d.wait_s == pytest.approx(240.0)


def test_evicts_once_confirmed() -> None:
    s = CheckpointState("ft", checkpoint_first=True, requested_at=100.0, confirmed_at=150.0)
    assert checkpoint_step(s, now=151.0, deadline_s=DEADLINE).action == CheckpointAction.EVICT


def test_a_checkpoint_older_than_the_request_does_not_count() -> None:
    s = CheckpointState("ft", checkpoint_first=True, requested_at=100.0, confirmed_at=90.0)
    assert checkpoint_step(s, now=120.0, deadline_s=DEADLINE).action == CheckpointAction.WAIT


def test_evicts_at_the_deadline_without_confirmation() -> None:
    s = CheckpointState("ft", checkpoint_first=True, requested_at=100.0)
    d = checkpoint_step(s, now=400.0, deadline_s=DEADLINE)
    assert d.action == CheckpointAction.EVICT
    assert "deadline" in d.reason


def test_gangs_without_handshake_are_evicted_directly() -> None:
    s = CheckpointState("replica", checkpoint_first=False)
    assert checkpoint_step(s, now=0.0, deadline_s=DEADLINE).action == CheckpointAction.EVICT


def test_never_evicts_before_requesting_and_never_waits_past_the_deadline() -> None:
    # Walk the machine through time the way the shell would and check the order of actions.
    state = CheckpointState("ft", checkpoint_first=True)
    actions = []
    for now in range(0, 1000, 50):
        d = checkpoint_step(state, now=float(now), deadline_s=DEADLINE)
        actions.append(d.action)
        if d.action == CheckpointAction.REQUEST_CHECKPOINT:
            state = CheckpointState("ft", True, requested_at=float(now))
        if d.action == CheckpointAction.EVICT:
            break
    waits = int(DEADLINE // 50) - 1  # requested at 0, evicted at the deadline
    assert actions == [CheckpointAction.REQUEST_CHECKPOINT] + [CheckpointAction.WAIT] * waits + [CheckpointAction.EVICT]


def test_rejects_a_non_positive_deadline() -> None:
    with pytest.raises(ValueError):
        checkpoint_step(CheckpointState("ft", True), now=0.0, deadline_s=0.0)
