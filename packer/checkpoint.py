"""The checkpoint-before-evict handshake for preempted fine-tuning gangs, as a pure state machine.

The shell calls `checkpoint_step` each time it looks at a victim: first it asks the trainer for a checkpoint, then
waits, and evicts once the checkpoint is confirmed or the deadline has passed. Time is the caller's `now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CheckpointAction(StrEnum):
    """What the shell should do with a victim now."""

    REQUEST_CHECKPOINT = "request_checkpoint"  # annotate the gang / call the trainer endpoint, record the time
    WAIT = "wait"  # look again after `wait_s`
    EVICT = "evict"  # delete the gang's pods


@dataclass(frozen=True)
class CheckpointState:
    """What the shell knows about one victim's handshake."""

    gang: str
    checkpoint_first: bool  # the plan marked it (preemptible fine-tuning)
    requested_at: float | None = None  # when the checkpoint was requested
    confirmed_at: float | None = None  # time of the latest checkpoint the trainer confirmed


@dataclass(frozen=True)
class CheckpointDecision:
    """The action, why, and how long to wait before asking again (WAIT only)."""

    action: CheckpointAction
    reason: str
    wait_s: float = 0.0


def checkpoint_step(state: CheckpointState, now: float, deadline_s: float) -> CheckpointDecision:
    """Next step of the handshake: request a checkpoint, wait for it, or evict."""
    if deadline_s <= 0:
        raise ValueError("the checkpoint deadline must be positive")
    if not state.checkpoint_first:
        return CheckpointDecision(CheckpointAction.EVICT, "no checkpoint handshake for this gang")
    if state.requested_at is None:
        return CheckpointDecision(CheckpointAction.REQUEST_CHECKPOINT, "checkpoint requested before eviction")
    if state.confirmed_at is not None and state.confirmed_at >= state.requested_at:
        return CheckpointDecision(CheckpointAction.EVICT, f"checkpoint confirmed at {state.confirmed_at:g}")
    elapsed = max(0.0, now - state.requested_at)
    if elapsed >= deadline_s:
        return CheckpointDecision(
            CheckpointAction.EVICT, f"no checkpoint confirmed within the {deadline_s:g}s deadline"
        )
    return CheckpointDecision(CheckpointAction.WAIT, "waiting for the checkpoint", wait_s=deadline_s - elapsed)
