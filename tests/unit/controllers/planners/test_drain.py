"""Drain timing: routers let go first, then the gang is deleted and its engines' graceful shutdown drains it."""

from __future__ import annotations

import pytest

from controllers.planners.drain import TEARDOWN_MARGIN_S, draining_gangs, shutdown_timeout_s, termination_grace_s
from crds import labels as L
from tests.unit.controllers.builders import pod

NOW = 1_000.0
DEREGISTRATION_S = 5.0


@pytest.mark.parametrize(("elapsed", "deletable"), [(0.0, False), (4.9, False), (5.0, True), (600.0, True)])
def test_a_gang_is_deletable_once_routers_have_let_go(elapsed: float, deletable: bool) -> None:
    [gang] = draining_gangs([pod(1, **{L.DRAIN_STARTED: str(NOW)})], NOW + elapsed, DEREGISTRATION_S)
    assert gang.deletable is deletable


def test_draining_gangs_start_when_their_first_member_was_marked() -> None:
    pods = [
        pod(0),
        pod(1, "leader", **{L.DRAIN_STARTED: str(NOW + 2)}),
        pod(1, "worker-0", **{L.DRAIN_STARTED: str(NOW)}),
        pod(2, **{L.DRAIN_STARTED: str(NOW + 10)}),
    ]
    gangs = draining_gangs(pods, NOW + 6, DEREGISTRATION_S)
    assert [(g.replica, g.started, g.deletable) for g in gangs] == [(1, NOW, True), (2, NOW + 10, False)]


def test_pods_already_deleting_are_not_drained_again() -> None:
    gone = pod(1, **{L.DRAIN_STARTED: str(NOW)})
    gone = gone.__class__(**{**gone.__dict__, "deleting": True})
    assert draining_gangs([pod(0), gone], NOW + 100, DEREGISTRATION_S) == []


@pytest.mark.parametrize("grace", [0, 30, 600])
def test_the_pod_outlives_the_engines_shutdown_timeout_by_its_teardown(grace: int) -> None:
    assert shutdown_timeout_s(grace) == grace
    assert termination_grace_s(grace) == grace + TEARDOWN_MARGIN_S
    assert TEARDOWN_MARGIN_S >= 13, "vLLM 0.32.0 was measured tearing down for up to 13 s after its work ended"
