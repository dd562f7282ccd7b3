"""Rolling updates: a changed pod template replaces gangs one at a time, each drained before its replacement
exists, and the service stays Ready with at most one gang out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controllers.planners.gangs import template_hash
from controllers.planners.llmservice import ServicePlan, plan_service
from controllers.planners.rollout import next_to_replace, outdated, scale_in_order
from controllers.planners.snapshot import PodView
from crds import labels as L
from crds.llmservice import LLMService, LLMServiceStatus
from crds.reasons import ConditionType, Reason
from tests.unit.controllers.builders import pod, service

NOW = 1_000.0


def new_args(replicas: int = 3) -> LLMService:
    return service(replicas=replicas, engine={"type": "simulated", "args": ["--max-num-seqs", "128"]})


def condition(plan: ServicePlan, type_: str) -> dict[str, Any]:
    return next(c for c in plan.status["conditions"] if c["type"] == type_)


def test_gangs_of_another_template_are_outdated() -> None:
    old, new = service(), new_args()
    gangs = {0: [pod(0, template=old)], 1: [pod(1, template=new)]}
    assert outdated(gangs, template_hash(new.spec)) == {0}
    assert template_hash(service(replicas=7).spec) == template_hash(old.spec), "replicas do not shape a pod"


def test_scale_in_drains_outdated_gangs_first_then_the_newest() -> None:
    assert scale_in_order([0, 1, 2, 3], stale={1}) == [1, 3, 2, 0]


def test_the_roll_waits_for_drains_and_for_replacements_to_be_ready() -> None:
    assert next_to_replace([0, 1, 2], {0, 1, 2}, {0, 1, 2}, draining=False, desired=3) == 2
    assert next_to_replace([0, 1, 2], {0, 1, 2}, {0, 1, 2}, draining=True, desired=3) is None
    assert next_to_replace([0, 1, 3], {0, 1}, {0, 1}, draining=False, desired=3) is None, "replica 3 is starting"
    assert next_to_replace([0, 1], {0, 1}, {0, 1}, draining=False, desired=3) is None, "scaling comes first"
    assert next_to_replace([0, 1, 2], {0, 1}, {1, 2}, draining=False, desired=3) == 0, "an unready one goes first"
    assert next_to_replace([0, 1, 2], set(), {0, 1, 2}, draining=False, desired=3) is None


def test_a_template_change_drains_one_gang_and_the_service_stays_ready() -> None:
    old = [pod(r) for r in range(3)]
    plan = plan_service(new_args(), "uid", old, set(), NOW)
    assert plan.start_drain == [2] and plan.create == [] and plan.delete == []
    assert (Reason.ROLLING_UPDATE, "draining replica 2") == (plan.events[-1][1], plan.events[-1][2][:18])
    assert condition(plan, ConditionType.READY)["status"] == "True"
    assert condition(plan, ConditionType.PROGRESSING)["reason"] == Reason.ROLLING_UPDATE
    assert plan.status["updatedReplicas"] == 0 and plan.status["phase"] == "Progressing"


def test_an_outdated_gang_is_never_completed_with_pods_of_the_new_template() -> None:
    svc = new_args(replicas=1)
    multi = service(replicas=1, gpu={"count": 16, "perNode": 8}, parallelism={"tensor": 8, "pipeline": 2})
    leader = pod(0, "leader", template=multi, **{L.GANG_SIZE: "2"})
    plan = plan_service(svc, "uid", [leader], set(), NOW)
    assert plan.create == [] and plan.start_drain == [0], "the broken old gang is replaced, not completed"


def test_reverting_a_bad_template_replaces_the_gang_that_never_became_ready() -> None:
    bad = new_args()
    pods = [pod(0), pod(1), pod(3, ready=False, template=bad)]
    plan = plan_service(service(replicas=3), "uid", pods, set(), NOW)
    assert plan.start_drain == [3] and plan.create == []


class World:
    """The cluster as one reconcile pass after another leaves it: created gangs start (Ready a pass later),
    marked gangs leave routing (deleted a pass later) and deleted pods go."""

    def __init__(self, svc: LLMService, pods: list[PodView]) -> None:
        self.svc, self.pods, self.now = svc, pods, NOW
        self.status: dict[str, Any] = {}

    def step(self) -> ServicePlan:
        self.now += 1.0
        svc = self.svc.model_copy(update={"status": LLMServiceStatus.model_validate(self.status)})
        plan = plan_service(svc, "uid", self.pods, set(), self.now)
        self.status = plan.status
        gone = set(plan.delete)
        self.pods = [
            replace(p, ready=True) if p.labels[L.TEMPLATE_HASH] == template_hash(self.svc.spec) else p
            for p in self.pods
            if p.name not in gone
        ]
        for r in plan.start_drain:
            self.pods = [
                replace(p, annotations={**p.annotations, L.DRAIN_STARTED: str(self.now)}) if p.replica == r else p
                for p in self.pods
            ]
        for m in plan.create:
            replica = int(m["metadata"]["labels"][L.REPLICA])
            self.pods.append(pod(replica, ready=False, template=self.svc))
        return plan

    def gangs(self) -> dict[int, str]:
        return {p.replica: p.labels[L.TEMPLATE_HASH] for p in self.pods}


def test_a_roll_replaces_every_gang_one_at_a_time_with_at_most_one_out() -> None:
    svc = new_args()
    world = World(svc, [pod(r) for r in range(3)])
    for _ in range(30):
        plan = world.step()
        draining = {p.replica for p in world.pods if p.draining_since is not None}
        assert len(draining) <= 1, f"more than one gang out at once: {draining}"
        assert plan.status["readyReplicas"] >= 2, "a roll takes out one gang at a time"
        assert condition(plan, ConditionType.READY)["status"] == "True"
        if condition(plan, ConditionType.PROGRESSING)["reason"] == Reason.CONVERGED:
            break
    else:
        raise AssertionError(f"the roll does not finish: {world.gangs()}")
    assert world.gangs() == {r: template_hash(svc.spec) for r in (3, 4, 5)}, "new indices, never a draining one's"
    assert plan.status["updatedReplicas"] == 3 and plan.status["phase"] == "Ready"
