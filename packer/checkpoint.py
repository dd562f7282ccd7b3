"""Checkpoint or delete: the one handshake before a preempted fine-tuning gang gives up its GPUs.

Two shells walk the same state machine. The packer's shell calls `checkpoint_step` for each eviction its plan
makes: a preemptible FineTuneJob is asked to checkpoint (a request with a deadline, written on the job), anything
else is evicted at once. The FineTuneJob controller calls it on every pass while a request stands: it signals the
workers (deletes them with their grace period: SIGTERM means "checkpoint now, then exit", docs/finetuning.md), and
counts the preemption clean once it reads the checkpoint step back from the trainer's metrics; it ends the wait when
the workers are gone or the deadline has passed. Whichever shell looks first after the deadline evicts, so the
preemptor's wait is bounded even when the job's reconcile is behind. Time is the caller's `now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CheckpointAction(StrEnum):
    """What the shell should do with a victim now."""

    REQUEST_CHECKPOINT = "request_checkpoint"  # ask the job to checkpoint before it goes, with `deadline`
    SIGNAL = "signal"  # SIGTERM the workers (delete them with their grace period): checkpoint now, then exit
    WAIT = "wait"  # the request stands: the job's controller signals the trainer and looks again
    EVICT = "evict"  # delete the gang's pods now


@dataclass(frozen=True)
class CheckpointState:
    """What the calling shell knows of one victim's handshake."""

    checkpoint_first: bool  # a preemptible fine-tuning gang (the plan's Eviction.checkpoint_first)
    requested: bool = False  # a checkpoint has been asked for
    deadline: float | None = None  # when eviction proceeds without a checkpoint; None waits for one
    trainer_running: bool = True  # the attempt's workers run (or are still terminating), so a checkpoint can come
    signalled: bool = False  # the workers were sent SIGTERM
    confirmed: bool = False  # a checkpoint step at or past the step at SIGTERM was read back


@dataclass(frozen=True)
class CheckpointDecision:
    """The action and why; a request carries the deadline to write with it."""

    action: CheckpointAction
    reason: str
    deadline: float | None = None


def checkpoint_step(state: CheckpointState, now: float, deadline_s: float | None = None) -> CheckpointDecision:
    """Next step of the handshake: request a checkpoint (due `deadline_s` from now; None: no deadline, as a
    user's own request has), wait for it, or evict."""
    if deadline_s is not None and deadline_s <= 0:
        raise ValueError("the checkpoint deadline must be positive")
    if not state.checkpoint_first:
        return CheckpointDecision(CheckpointAction.EVICT, "not preemptible with a checkpoint")
    if not state.requested:
        deadline = now + deadline_s if deadline_s is not None else None
        return CheckpointDecision(CheckpointAction.REQUEST_CHECKPOINT, "checkpoint requested before eviction", deadline)
    if state.confirmed:
        return CheckpointDecision(CheckpointAction.EVICT, "checkpoint confirmed")
    if not state.trainer_running:
        if state.signalled:
            return CheckpointDecision(
                CheckpointAction.EVICT, "workers exited after SIGTERM; the next attempt reports the step it resumes"
            )
        return CheckpointDecision(CheckpointAction.EVICT, "no running trainer to checkpoint")
    if state.deadline is not None and now >= state.deadline:
        return CheckpointDecision(CheckpointAction.EVICT, "no checkpoint confirmed before the deadline")
    if not state.signalled:
        return CheckpointDecision(CheckpointAction.SIGNAL, "SIGTERM: checkpoint now, then exit")
    return CheckpointDecision(CheckpointAction.WAIT, "waiting for the checkpoint")
