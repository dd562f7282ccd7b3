"""Drain timing: routers let go first, then engines are asked to stop, and the grace period bounds the wait."""

from __future__ import annotations

import pytest

from controllers.planners.drain import DrainStage, DrainTiming, drain_stage, draining_gangs, may_delete
from crds import labels as L
from tests.unit.controllers.builders import pod

NOW = 1_000.0
TIMING = DrainTiming(deregistration_s=5.0, grace_s=60.0)


@pytest.mark.parametrize(
    ("elapsed", "stage"),
    [
        (0.0, DrainStage.DEREGISTERING),
        (4.9, DrainStage.DEREGISTERING),
        (5.0, DrainStage.STOPPING),
        (59.9, DrainStage.STOPPING),
        (60.0, DrainStage.EXPIRED),
    ],
)
def test_a_drain_deregisters_then_stops_then_expires(elapsed: float, stage: DrainStage) -> None:
    assert drain_stage(NOW, NOW + elapsed, TIMING) == stage


def test_a_grace_period_shorter_than_deregistration_wins() -> None:
    assert drain_stage(NOW, NOW + 1.0, DrainTiming(deregistration_s=5.0, grace_s=0.0)) == DrainStage.EXPIRED


def test_an_idle_engine_is_not_enough_while_routers_may_still_send() -> None:
    assert not may_delete(DrainStage.DEREGISTERING, engines_idle=True)
    assert may_delete(DrainStage.STOPPING, engines_idle=True)
    assert not may_delete(DrainStage.STOPPING, engines_idle=False)
    assert may_delete(DrainStage.EXPIRED, engines_idle=False)


def test_draining_gangs_start_when_their_first_member_was_marked_and_ask_only_entry_pods() -> None:
    pods = [
        pod(0),
        pod(1, "leader", **{L.DRAIN_STARTED: str(NOW + 2)}),
        pod(1, "worker-0", **{L.DRAIN_STARTED: str(NOW)}),
        pod(2, **{L.DRAIN_STARTED: str(NOW + 10)}),
    ]
    gangs = draining_gangs(pods, NOW + 6, TIMING)
    assert [(g.replica, g.started, g.stage) for g in gangs] == [
        (1, NOW, DrainStage.STOPPING),
        (2, NOW + 10, DrainStage.DEREGISTERING),
    ]
    assert [p.name for p in gangs[0].entry_pods] == ["svc-r1-leader"]


def test_pods_already_deleting_are_not_drained_again() -> None:
    gone = pod(1, **{L.DRAIN_STARTED: str(NOW)})
    gone = gone.__class__(**{**gone.__dict__, "deleting": True})
    assert draining_gangs([pod(0), gone], NOW + 100, TIMING) == []
