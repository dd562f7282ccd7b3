"""Resume what-if: a preempted job resumes when its gang fits on free capacity, never at someone's expense, and
never ahead of more important pending work."""

from __future__ import annotations

from packer.resume import resumable
from tests.unit.packer.builders import ClusterBuilder, gang, pod


def test_a_waiting_gang_resumes_when_it_fits_on_free_gpus() -> None:
    snap = ClusterBuilder().node("a").run("sv", "a", gpus=4, priority=1000).build()
    assert resumable(snap, [gang("ft", pod("w0", 4), priority=0)], now=0.0) == ["ft"]


def test_nobody_is_preempted_to_make_room() -> None:
    snap = ClusterBuilder().node("a").run("low", "a", gpus=8, priority=0).build()
    assert resumable(snap, [gang("ft", pod("w0", 4), priority=100)], now=0.0) == []


def test_two_jobs_that_fit_only_one_at_a_time_do_not_both_resume() -> None:
    snap = ClusterBuilder().node("a").run("sv", "a", gpus=4, priority=1000).build()
    waiting = [gang("ft1", pod("a0", 4), created=1.0), gang("ft2", pod("b0", 4), created=2.0)]
    assert resumable(snap, waiting, now=0.0) == ["ft1"]


def test_higher_priority_pending_work_gets_returning_capacity_first() -> None:
    snap = ClusterBuilder().node("a").pend(gang("urgent", pod("u0", 8), priority=500)).build()
    assert resumable(snap, [gang("ft", pod("w0", 4), priority=100)], now=0.0) == []
    lesser = ClusterBuilder().node("a").pend(gang("batch", pod("b0", 8), priority=50)).build()
    assert resumable(lesser, [gang("ft", pod("w0", 4), priority=100)], now=0.0) == ["ft"]


def test_the_what_if_leaves_the_snapshot_unchanged() -> None:
    snap = ClusterBuilder().node("a").run("sv", "a", gpus=4).pend(gang("p", pod("p0", 2))).build()
    before = snap.fingerprint()
    resumable(snap, [gang("ft", pod("w0", 4))], now=0.0)
    assert snap.fingerprint() == before, "Snapshot was modified"
