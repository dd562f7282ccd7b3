"""One writer per status field: the LLMService reconciler and the autoscaler each send only the fields and
conditions they own (each applies them as its own field manager), so neither can erase what the other wrote."""

from __future__ import annotations

from typing import Any

from autoscaler.types import ScalingDecision
from controllers.planners.conditions import already_applied, invalid_spec_status, rfc3339, set_condition
from controllers.planners.llmservice import plan_service
from controllers.shells.autoscaling import decision_status
from crds.llmservice import LLMServiceStatus
from crds.reasons import ConditionType, Reason
from tests.unit.controllers.builders import pod, service

NOW = 1_000.0
DECISION = ScalingDecision(3, "forecast p90 above capacity", {"p50": 1.0, "p90": 2.0}, 1.5, 0.01, slo_attainable=True)


def both_writers_status() -> dict[str, Any]:
    """A status as the API server holds it after both writers applied theirs."""
    reconciler = plan_service(service(replicas=2), "uid", [pod(0), pod(1)], set(), NOW).status
    autoscaler = decision_status({}, DECISION, NOW, 1)
    return {**reconciler, **autoscaler, "conditions": reconciler["conditions"] + autoscaler["conditions"]}


def types(status: dict[str, Any]) -> set[str]:
    return {c["type"] for c in status["conditions"]}


def test_the_reconciler_sends_none_of_the_autoscalers_fields_or_conditions() -> None:
    svc = service(replicas=2)
    svc.status = LLMServiceStatus.model_validate(both_writers_status())
    sent = plan_service(svc, "uid", [pod(0), pod(1)], set(), NOW + 5).status
    assert "desiredReplicas" not in sent and "forecast" not in sent
    assert types(sent) == {ConditionType.READY, ConditionType.PROGRESSING, ConditionType.DEGRADED}


def test_the_autoscaler_sends_none_of_the_reconcilers_fields_or_conditions() -> None:
    sent = decision_status(both_writers_status(), DECISION, NOW + 5, 1)
    assert set(sent) == {"desiredReplicas", "forecast", "conditions"}
    assert types(sent) == {ConditionType.AUTOSCALER_DEGRADED, ConditionType.SLO_ATTAINABLE}


def test_each_writer_keeps_the_transition_time_of_its_own_conditions() -> None:
    current = both_writers_status()
    later = decision_status(current, DECISION, NOW + 60, 1)
    degraded = next(c for c in later["conditions"] if c["type"] == ConditionType.AUTOSCALER_DEGRADED)
    assert degraded["lastTransitionTime"] == rfc3339(NOW), "the status did not change, so neither did its time"


def test_a_problem_pass_keeps_only_the_reconcilers_conditions() -> None:
    svc = service(gpu={"count": 1, "types": ["B300"]})
    svc.status = LLMServiceStatus.model_validate(both_writers_status())
    sent = plan_service(svc, "uid", [], set(), NOW).status
    assert sent["phase"] == "Failed" and "desiredReplicas" not in sent
    assert types(sent) <= {ConditionType.READY, ConditionType.PROGRESSING, ConditionType.DEGRADED}


def test_an_unreadable_spec_writes_ready_false_once_and_warns_once() -> None:
    conditions = both_writers_status()["conditions"]
    status, events = invalid_spec_status(conditions, "spec.gpu.count: must be positive", NOW, 3)
    assert status["phase"] == "Failed" and types(status) == {ConditionType.READY}
    assert status["conditions"][0]["reason"] == Reason.INVALID_SPEC and len(events) == 1
    _, again = invalid_spec_status(status["conditions"], "spec.gpu.count: must be positive", NOW + 5, 3)
    assert again == []


def test_a_write_is_skipped_only_when_every_owned_field_and_condition_is_in_place() -> None:
    current = both_writers_status()
    own = decision_status(current, DECISION, NOW, 1)
    assert already_applied(current, own)
    assert not already_applied(current, {**own, "desiredReplicas": 4})
    changed = set_condition(own["conditions"], ConditionType.SLO_ATTAINABLE, False, Reason.SLO_UNATTAINABLE, "", NOW)
    assert not already_applied(current, {**own, "conditions": changed})
