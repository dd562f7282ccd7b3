"""LLMService planning: from the service and its pods to the pods to create, gangs to drain, and status."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from catalogue.models import ModelSpec as CatalogueModel
from catalogue.models import resolve_model
from controllers.planners.conditions import get_condition, report_problem, set_condition
from controllers.planners.drain import draining_gangs
from controllers.planners.gangs import Owner, gangs_gpus, pod_roles, replica_pods, template_hash
from controllers.planners.rescale import replaced_to_narrow
from controllers.planners.rollout import next_to_replace, outdated, scale_in_order
from controllers.planners.snapshot import PodView
from controllers.planners.validation import Problem, check_fits, check_gpu_types, check_priority_class, first_problem
from crds import labels as L
from crds.llmservice import LLMService, ModelSpec
from crds.reasons import ConditionType, EventType, Reason

# What the reconciler writes of an LLMService's status; the autoscaler writes the rest (desiredReplicas, forecast
# and its own conditions, controllers/shells/autoscaling.py). Each applies only its own fields: one writer per field.
OWNED_FIELDS = frozenset(
    {
        "replicas",
        "readyReplicas",
        "updatedReplicas",
        "ready",
        "selector",
        "gpus",
        "podsPerReplica",
        "phase",
        "observedGeneration",
    }
)
OWNED_CONDITIONS = frozenset({ConditionType.READY, ConditionType.PROGRESSING, ConditionType.DEGRADED})


@dataclass
class ServicePlan:
    """Everything the shell must do for one LLMService, and the status to write."""

    create: list[dict[str, Any]] = field(default_factory=list)
    start_drain: list[int] = field(default_factory=list)  # replica indices to drain, newest first
    delete: list[str] = field(default_factory=list)  # pod names
    status: dict[str, Any] = field(default_factory=dict)  # the reconciler's fields only (OWNED_FIELDS, conditions)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    problem: Problem | None = None


def widths(by_replica: dict[int, list[PodView]]) -> dict[int, int]:
    """The expert-parallel width each elastic replica's engine runs at, from its entry pod's annotation."""
    found: dict[int, int] = {}
    for r, pods in by_replica.items():
        for p in pods:
            raw = p.annotations.get(L.EXPERT_WIDTH)
            if raw is not None and raw.isdigit():
                found[r] = int(raw)
    return found


def model_of(m: ModelSpec) -> CatalogueModel:
    """The catalogue's view of the served model (known by name, else a generic shape of its size)."""
    return resolve_model(
        m.name,
        m.parameters_b,
        m.architecture,
        m.experts or 0,
        m.active_parameters_b,
        experts_per_token=m.experts_per_token or 2,
    )


def semantic_problem(svc: LLMService, priority_classes: Collection[str]) -> Problem | None:
    """The first reason this service cannot run as written, if any."""
    s = svc.spec
    # With prefill/decode roles each role pod holds the whole model on gpu.count GPUs; otherwise the
    # replica's gpu.count GPUs hold it together.
    try:
        model = model_of(s.model)
    except ValueError as err:
        return Problem(Reason.INVALID_SPEC, f"spec.model: {err}")
    return first_problem(
        check_gpu_types("spec.gpu.types", s.gpu.types),
        check_fits("spec.model.parametersB", model, s.gpu.count, s.gpu.types),
        check_priority_class("spec.priorityClassName", s.priority_class_name, priority_classes),
    )


def member_lost(gang: list[PodView], members: int) -> bool:
    """A gang short of members while one of them is bound: the missing ones were lost after placement (a gang a
    crashed operator half-created is never bound, so it is completed instead)."""
    size = int(gang[0].annotations.get(L.GANG_SIZE, members))
    return len(gang) < size and any(p.node for p in gang)


def plan_service(
    svc: LLMService,
    uid: str,
    pods: list[PodView],
    priority_classes: Collection[str],
    now: float,
    scheduler_name: str = "default-scheduler",
    deregistration_s: float = 0.0,
) -> ServicePlan:
    """Decide one reconcile pass. A draining gang is deleted once routers have let go of it (`deregistration_s`);
    its engines' own graceful shutdown finishes what is in flight (controllers/planners/drain.py)."""
    spec, name = svc.spec, svc.metadata.name
    owner = Owner("LLMService", name, svc.metadata.namespace or "default", uid)
    plan = ServicePlan()
    current = svc.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    status = {k: v for k, v in current.items() if k in OWNED_FIELDS}
    conditions = [c for c in current.get("conditions", []) if c["type"] in OWNED_CONDITIONS]
    gen = svc.metadata.generation

    by_replica: dict[int, list[PodView]] = defaultdict(list)
    for p in pods:
        by_replica[p.replica].append(p)
    members = len(pod_roles(spec))

    draining = sorted(r for r, ps in by_replica.items() if any(p.draining_since is not None for p in ps))
    active = sorted(r for r, ps in by_replica.items() if r not in draining and not any(p.deleting for p in ps))

    problem = semantic_problem(svc, priority_classes)
    if problem is not None:
        plan.problem = problem
        conditions, events = report_problem(conditions, problem.reason, problem.message, now, gen)
        plan.events += events
        conditions = set_condition(
            conditions, ConditionType.PROGRESSING, False, problem.reason, "waiting for a valid spec", now, gen
        )
        status.update(phase="Failed", conditions=conditions, observedGeneration=gen)
        status["selector"] = f"{L.SERVICE}={name}"
        status.setdefault("replicas", len(active))
        status.setdefault("readyReplicas", 0)
        plan.status = status
        return plan

    # A failed member breaks the whole gang: replicas start, serve and stop together. So does a member lost after
    # binding (its node deleted, the pod garbage-collected): the packer binds gangs all or nothing, so a lone
    # replacement would never be placed, and the survivors' engines have lost a rank anyway. (A gang of an older
    # template is left to the roll, which drains it first.)
    for r in list(active):
        if any(p.phase == "Failed" for p in by_replica[r]):
            broken = "a pod failed"
        elif member_lost(by_replica[r], members) and not outdated({r: by_replica[r]}, template_hash(spec)):
            broken = "a member was lost with its node"
        else:
            continue
        plan.delete += [p.name for p in by_replica[r]]
        plan.events.append(
            (EventType.WARNING, Reason.GANG_RESTARTED, f"replica {r}: {broken}; restarting the whole gang")
        )
        active.remove(r)

    desired = spec.replicas
    template = template_hash(spec)
    stale = outdated({r: by_replica[r] for r in active}, template)
    if spec.parallelism.elastic_expert:
        stale |= replaced_to_narrow(
            spec.engine.type, spec.model.architecture, spec.parallelism.expert, widths(by_replica)
        )
    if len(active) > desired:
        excess = scale_in_order(active, stale)[: len(active) - desired]
        plan.start_drain = excess
        for r in excess:
            active.remove(r)
        plan.events.append(
            (EventType.NORMAL, Reason.SCALING_DOWN, f"draining replica(s) {', '.join(map(str, excess))}")
        )
    elif len(active) < desired:
        occupied = set(by_replica)
        nxt = max(occupied, default=-1) + 1
        new = list(range(nxt, nxt + desired - len(active)))
        for r in new:
            plan.create += replica_pods(owner, spec, r, scheduler_name)
        active += new
        plan.events.append((EventType.NORMAL, Reason.SCALING_UP, f"creating replica(s) {', '.join(map(str, new))}"))

    # Complete gangs a crashed operator left half-created (names are deterministic, so this is idempotent); a gang
    # of an older template is never completed with pods of the current one: the roll replaces it.
    for r in active:
        have = {p.name for p in by_replica.get(r, [])}
        if by_replica.get(r) and len(have) < members and r not in stale:
            plan.create += [
                m for m in replica_pods(owner, spec, r, scheduler_name) if m["metadata"]["name"] not in have
            ]

    for gang in draining_gangs(pods, now, deregistration_s):
        if gang.deletable:
            plan.delete += [p.name for p in by_replica[gang.replica] if not p.deleting]

    def gang_ready(r: int) -> bool:
        ps = by_replica.get(r, [])
        size = int(ps[0].annotations.get(L.GANG_SIZE, members)) if ps else members  # an older template's size
        return len(ps) == size and all(p.ready for p in ps)

    ready_gangs = {r for r in active if gang_ready(r)}
    replacing = None
    if not plan.start_drain and not plan.create:
        replacing = next_to_replace(active, stale, ready_gangs, bool(draining), desired)
        if replacing is not None:
            plan.start_drain = [replacing]
            active.remove(replacing)
            ready_gangs.discard(replacing)
            plan.events.append(
                (
                    EventType.NORMAL,
                    Reason.ROLLING_UPDATE,
                    f"draining replica {replacing} to replace it (template {template})",
                )
            )
    stale &= set(active)
    ready = len(ready_gangs)
    unsched = next((p.unschedulable for r in active for p in by_replica.get(r, []) if p.unschedulable), None)
    converged = ready == desired and not draining and not plan.start_drain and not plan.create and not stale
    # A roll lasts until the last replacement is Ready; the reason this writer set before carries it across the
    # final step, when no outdated gang is left to tell.
    before = get_condition(conditions, ConditionType.PROGRESSING) or {}
    rolling = not converged and (bool(stale) or replacing is not None or before.get("reason") == Reason.ROLLING_UPDATE)

    if desired == 0:
        conditions = set_condition(
            conditions, ConditionType.READY, True, Reason.SCALED_TO_ZERO, "no replicas requested", now, gen
        )
    elif ready >= desired:
        conditions = set_condition(
            conditions, ConditionType.READY, True, Reason.ALL_REPLICAS_READY, f"{ready}/{desired} ready", now, gen
        )
    elif rolling and ready >= desired - 1:
        # Like a Deployment's Available: the one gang a roll takes out at a time does not make the service unready.
        message = f"{ready}/{desired} ready while one gang is replaced"
        conditions = set_condition(conditions, ConditionType.READY, True, Reason.ROLLING_UPDATE, message, now, gen)
    else:
        conditions = set_condition(
            conditions,
            ConditionType.READY,
            False,
            Reason.REPLICAS_NOT_READY,
            f"{ready}/{desired} replicas ready",
            now,
            gen,
        )
    if converged:
        conditions = set_condition(
            conditions, ConditionType.PROGRESSING, False, Reason.CONVERGED, "replicas match spec", now, gen
        )
    elif rolling:
        message = f"{len(active) - len(stale)}/{desired} replicas on the current template"
        conditions = set_condition(
            conditions, ConditionType.PROGRESSING, True, Reason.ROLLING_UPDATE, message, now, gen
        )
    else:
        reason = Reason.SCALING_DOWN if (draining or plan.start_drain) else Reason.SCALING_UP
        conditions = set_condition(
            conditions, ConditionType.PROGRESSING, True, reason, f"{len(active)} replicas, want {desired}", now, gen
        )
    if unsched:
        previous = next((c for c in conditions if c["type"] == ConditionType.DEGRADED), None)
        if previous is None or previous.get("status") != "True":
            plan.events.append((EventType.WARNING, Reason.UNSCHEDULABLE, unsched))
        conditions = set_condition(conditions, ConditionType.DEGRADED, True, Reason.UNSCHEDULABLE, unsched, now, gen)
    elif plan.delete and any(e[1] == Reason.GANG_RESTARTED for e in plan.events):
        conditions = set_condition(
            conditions, ConditionType.DEGRADED, True, Reason.GANG_RESTARTED, "a pod failed", now, gen
        )
    else:
        conditions = set_condition(conditions, ConditionType.DEGRADED, False, Reason.HEALTHY, "", now, gen)

    if desired > 0 and ready == 0:
        phase = "Pending"
    elif converged:
        phase = "Ready"
    else:
        phase = "Progressing"
    status.update(
        replicas=len(active),
        readyReplicas=ready,
        updatedReplicas=len(active) - len(stale),
        ready=f"{ready}/{desired}",
        selector=f"{L.SERVICE}={name}",
        gpus=len(active) * gangs_gpus(spec),
        podsPerReplica=members,
        phase=phase,
        observedGeneration=gen,
        conditions=conditions,
    )
    plan.status = status
    return plan
