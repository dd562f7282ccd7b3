"""Who leads: kopf's peering rule over the claims in the peering object's status."""

from __future__ import annotations

from typing import Any

from controllers.planners.conditions import rfc3339
from controllers.planners.peering import is_active

NOW = 1_800_000_000.0


def claim(priority: int, seen_ago_s: float = 1.0, lifetime: int = 60) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime, "lastseen": rfc3339(NOW - seen_ago_s)}


def test_the_highest_live_priority_leads_and_the_others_stand_by() -> None:
    status = {"a": claim(10), "b": claim(20)}
    assert is_active(status, "b", 20, NOW)
    assert not is_active(status, "a", 10, NOW)


def test_a_peer_whose_claim_expired_no_longer_holds_the_others_back() -> None:
    status = {"a": claim(10), "b": claim(20, seen_ago_s=61)}
    assert is_active(status, "a", 10, NOW)
    assert not is_active({**status, "b": claim(20, seen_ago_s=59)}, "a", 10, NOW)


def test_a_tie_pauses_every_replica_of_it_as_kopf_does() -> None:
    status = {"a": claim(10), "b": claim(10)}
    assert not is_active(status, "a", 10, NOW) and not is_active(status, "b", 10, NOW)


def test_a_replica_alone_leads_even_before_its_own_claim_is_written() -> None:
    assert is_active({}, "a", 10, NOW)
    assert is_active({"a": claim(10)}, "a", 10, NOW)


def test_a_claim_without_lastseen_counts_as_seen_now_and_junk_entries_are_ignored() -> None:
    status = {"b": {"priority": 20, "lifetime": 60}, "junk": "not a claim"}
    assert not is_active(status, "a", 10, NOW)
