"""Shell of the in-place width change of elastic MoE replicas: observe, call controllers/planners/rescale.py,
apply its actions. Runs inside the LLMService reconcile, one replica at a time.

The operation record lives on the replica's entry pod (annotation), so a restarted operator resumes it; this
process keeps its own latest copy too, because the watch-fed cache shows the annotation a moment late. The resize
call returns only when the engine has finished, so it runs as a task of its own and a later pass reads its answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.engine_api import ElasticEPClient, engine_url
from adapters.kube import Kube
from catalogue.gpus import lookup_gpu
from controllers.planners import rescale as R
from controllers.planners.conditions import get_condition, set_condition
from controllers.planners.gangs import Owner, joiner_pods
from controllers.planners.llmservice import model_of
from controllers.planners.snapshot import PodView
from crds import labels as L
from crds.llmservice import LLMService
from crds.reasons import ConditionType, EventType, Reason

log = logging.getLogger("ebbtide.rescale")
ENTRY_ROLES = ("server", "leader")


@dataclass
class RescaleState:
    """What this operator process remembers between passes: its latest copy of each operation and the resize
    calls in flight, by operation id."""

    client: ElasticEPClient | None = None
    ops: dict[str, R.Operation] = field(default_factory=dict)
    calls: dict[str, asyncio.Task[int | None]] = field(default_factory=dict)

    def http(self) -> ElasticEPClient:
        if self.client is None:
            self.client = ElasticEPClient()
        return self.client


STATE = RescaleState()


@dataclass
class RescaleOutcome:
    """What the reconcile writes back: Events, the status fields, and whether to look again soon."""

    events: list[tuple[str, str, str]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    busy: bool = False


def is_joiner(pod: PodView) -> bool:
    """A rank pod that joined a running replica (it belongs to no gang plan_service manages)."""
    return pod.labels.get(L.ROLE) == L.EP_RANK_ROLE


def _width(pod: PodView, op: R.Operation | None, default: int) -> int:
    """The width the replica's engine runs at: the finished operation's (the cache may not show it yet), else
    the pod's annotation."""
    if op is not None and op.phase == R.Phase.DONE:
        return op.to_width
    try:
        return int(pod.annotations.get(L.EXPERT_WIDTH, default))
    except ValueError:
        return default


async def rescale_service(
    kube: Kube,
    body: Mapping[str, Any],
    svc: LLMService,
    pods: list[PodView],
    conditions: list[dict[str, Any]],
    now: float,
    scheduler_name: str,
    settle_s: float,
    state: RescaleState = STATE,
) -> RescaleOutcome:
    """One step of the width change under way, or the start of the next one, for an elastic MoE service."""
    spec = svc.spec
    out = RescaleOutcome()
    previous_layout = (body.get("status") or {}).get("expertLayout")
    if previous_layout is not None:
        out.status["expertLayout"] = previous_layout
    if spec.model.architecture != "moe" or not spec.parallelism.elastic_expert:
        return out
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    generation = meta.get("generation")
    owner = Owner("LLMService", name, namespace, uid)
    live = [p for p in pods if not p.deleting and p.draining_since is None]
    entries = {p.replica: p for p in live if p.labels.get(L.ROLE) in ENTRY_ROLES}
    joiners: dict[int, list[PodView]] = {}
    for p in pods:
        if is_joiner(p):
            joiners.setdefault(p.replica, []).append(p)

    ops = {r: _op(p, state) for r, p in entries.items()}
    desired = spec.parallelism.expert
    widths = {r: _width(p, ops[r], desired) for r, p in entries.items()}
    running = next(((r, op) for r, op in ops.items() if op is not None and R.active(op)), None)
    if running is None:
        # Rank pods of a replica that is gone, or beyond the width its engine runs at, hold GPUs for nothing (a
        # scale-in or a restart took the replica away underneath them).
        for held, js in joiners.items():
            for j in js:
                if j.rank >= widths.get(held, 0) and not j.deleting:
                    await kube.delete_pod(namespace, j.name)
        if any(op is not None and op.phase == R.Phase.FAILED and op.to_width == desired for op in ops.values()):
            return out  # a failed change is not retried until the width asked for changes again
        chosen = R.next_replica(widths, {r: p.ready for r, p in entries.items()}, desired)
        replacing = get_condition(conditions, ConditionType.RESCALING) or {}
        if chosen is None:
            if (
                replacing.get("status") == "True"
                and replacing.get("reason") == Reason.ELASTIC_EP_UNAVAILABLE
                and set(widths.values()) == {desired}
            ):
                message = f"every replica runs at EP {desired}"
                conditions[:] = set_condition(
                    conditions, ConditionType.RESCALING, False, Reason.RESCALED, message, now, generation
                )
            return out
        replica = chosen
        joined = len(joiners.get(replica, []))
        begun = _begin(svc, uid, entries[replica], ops[replica], widths[replica], joined, now)
        if begun.step is None and begun.path == R.Path.WHOLE_REPLICA:
            # Nothing resizes in place: plan_service replaces the replica whole (drained first, like a roll) and
            # its replacement starts at the width asked for. Said once per replica.
            message = f"replica {replica} EP {widths[replica]} -> {desired}: {begun.message}; replacing it whole"
            if replacing.get("status") != "True" or replacing.get("message") != message:
                out.events.append((EventType.WARNING, begun.reason, message))
            conditions[:] = set_condition(
                conditions, ConditionType.RESCALING, True, begun.reason, message, now, generation
            )
            out.busy = True
            return out
        if begun.step is None:
            # Refused, or no elastic path: nothing moved; the width asked for stays unmet until it changes. The
            # Event goes out once, not on every pass that finds the same refusal.
            told = get_condition(conditions, ConditionType.RESCALE_FAILED) or {}
            if told.get("status") != "True" or told.get("message") != begun.message:
                out.events.append((EventType.WARNING, begun.reason, begun.message))
            conditions[:] = set_condition(
                conditions, ConditionType.RESCALE_FAILED, True, begun.reason, begun.message, now, generation
            )
            return out
        out.events.append((_event_type(begun.reason), begun.reason, begun.message))
        if begun.expert_layout is not None:
            out.status["expertLayout"] = begun.expert_layout
        step = begun.step
    else:
        replica, op = running
        seen = await _observe(op, entries[replica], joiners.get(replica, []), svc, state)
        limits = R.Timeouts(holding_s=float(spec.drain_grace_period_seconds), settle_s=settle_s)
        step = R.advance(op, seen, now, limits)
        if step.op.phase != op.phase:
            out.events.append((_event_type(step.reason), step.reason, step.message))
            log.info("%s/%s %s: %s -> %s: %s", namespace, name, op.op_id, op.phase, step.op.phase, step.message)
    entry, others = entries[replica], joiners.get(replica, [])
    gpus = R.gpus_per_rank(spec.gpu.count, widths[replica] - len(others))
    await _apply(kube, owner, svc, entry, others, step, gpus, scheduler_name, state)
    for type_, status, reason in R.conditions_for(step):
        conditions[:] = set_condition(conditions, type_, status, reason, step.message, now, generation)
    out.busy = R.active(step.op)
    return out


def _op(entry: PodView, state: RescaleState) -> R.Operation | None:
    stored = R.decode(entry.annotations.get(L.RESCALE))
    if stored is None:
        return None
    mine = state.ops.get(stored.op_id)
    return mine if mine is not None and mine.phase_since_s >= stored.phase_since_s else stored


def _event_type(reason: Reason) -> str:
    return EventType.NORMAL if reason in (Reason.RESCALING, Reason.RESCALED) else EventType.WARNING


def _begin(
    svc: LLMService,
    uid: str,
    entry: PodView,
    last: R.Operation | None,
    width: int,
    joined: int,
    now: float,
) -> R.Begin:
    spec = svc.spec
    model = model_of(spec.model)
    product = entry.annotations.get(L.GPU_PRODUCT, "")
    gpu = lookup_gpu(product)
    if gpu is None:
        message = f"EP {width} -> {spec.parallelism.expert} refused: GPU product {product!r} is not in the catalogue"
        return R.Begin(R.Path.IN_PLACE, Reason.RESCALE_REFUSED, message)
    experts = spec.model.experts or model.experts
    current = R.current_layout(last, experts, width)
    op_id = R.operation_id(uid, entry.replica, width, spec.parallelism.expert, int(svc.metadata.generation or 0))
    # The engines' per-expert load is not read yet: the layout is planned for an even load.
    load = [1.0] * experts
    per_rank = R.gpus_per_rank(spec.gpu.count, max(1, width - joined))
    return R.begin(
        model,
        gpu,
        spec.engine.type,
        spec.parallelism.elastic_expert,
        load,
        current,
        entry.replica,
        spec.parallelism.expert,
        op_id,
        now,
        tensor_parallel=per_rank,
    )


async def _observe(
    op: R.Operation, entry: PodView, joiners: list[PodView], svc: LLMService, state: RescaleState
) -> R.Observation:
    """What the operation's phase needs: joiner pods, requests in flight, the resize's answer, a canary."""
    model = svc.spec.model.name
    mine = [j for j in joiners if op.from_width <= j.rank < op.to_width]
    url = engine_url(entry, svc.spec.engine.port)
    # A rank pod being deleted counts as released: its engine ranks are already shut down, and the packer keeps
    # its GPUs booked until the pod is gone.
    seen = R.Observation(
        joiners_ready=len(mine) == op.joining and all(j.ready and not j.deleting for j in mine),
        joiners_failed=any(j.phase == "Failed" for j in mine),
        retired_gone=all(j.deleting for j in joiners if j.rank in op.retired_ranks),
        joiners_gone=all(j.deleting for j in mine),
    )
    if op.phase == R.Phase.HOLDING:
        inflight = await state.http().inflight(url, model) if url else None
        return R.Observation(**{**seen.__dict__, "inflight": 1 if inflight is None else inflight})
    if op.phase == R.Phase.RESIZING:
        if op.op_id not in state.calls and url is not None:
            # Another operator process made the call: ask again, which the engine answers 200 once at that width.
            _call_scale(entry, svc, op, state)
        task = state.calls.get(op.op_id)
        answered = task.result() if task is not None and task.done() else None
        return R.Observation(**{**seen.__dict__, "scale_status": answered})
    if op.phase == R.Phase.CANARY:
        # A failed canary is asked again on the next pass until the canary timeout decides.
        ok = await state.http().canary(url, model) if url else False
        return R.Observation(**{**seen.__dict__, "canary_ok": ok or None})
    return seen


async def _apply(
    kube: Kube,
    owner: Owner,
    svc: LLMService,
    entry: PodView,
    joiners: list[PodView],
    step: R.Step,
    gpus: int,
    scheduler_name: str,
    state: RescaleState,
) -> None:
    op, ns = step.op, owner.namespace
    state.ops[op.op_id] = op
    labels: dict[str, str | None] = {}
    annotations: dict[str, str | None] = {L.RESCALE: R.encode(op)}
    if R.Action.HOLD_TRAFFIC in step.actions:
        # The Service (and the gateways) select entry pods by this label: the instance gets nothing new.
        labels[L.ENTRYPOINT] = None
    if R.Action.RESUME_TRAFFIC in step.actions:
        labels[L.ENTRYPOINT] = "true"
    if op.phase in (R.Phase.RETIRING, R.Phase.DONE) or (
        op.phase == R.Phase.FAILED and R.Action.RESUME_TRAFFIC in step.actions
    ):
        # Only after the engine answered the resize: it runs the new width (a failed canary comes after that too).
        annotations[L.EXPERT_WIDTH] = str(op.to_width)
    await kube.patch_pod(ns, entry.name, {"metadata": {"labels": labels, "annotations": annotations}})
    for action in step.actions:
        if action == R.Action.CREATE_JOINERS:
            ranks = range(op.from_width, op.to_width)
            for manifest in joiner_pods(owner, svc.spec, op.replica, op.op_id, ranks, gpus, scheduler_name):
                await kube.create_pod(manifest)
        elif action == R.Action.DELETE_JOINERS:
            for j in joiners:
                if op.from_width <= j.rank < op.to_width and not j.deleting:
                    await kube.delete_pod(ns, j.name)
        elif action == R.Action.CALL_SCALE and op.op_id not in state.calls:
            _call_scale(entry, svc, op, state)
        elif action == R.Action.DELETE_RETIRED:
            for j in joiners:
                if j.rank in op.retired_ranks and not j.deleting:
                    await kube.delete_pod(ns, j.name)
    if not R.active(op):
        state.calls.pop(op.op_id, None)


def _call_scale(entry: PodView, svc: LLMService, op: R.Operation, state: RescaleState) -> None:
    """Start the resize call as a task of its own: the engine answers only when it has finished."""
    url = engine_url(entry, svc.spec.engine.port)
    if url is None:
        return
    coro = state.http().scale(url, op.to_width, svc.spec.drain_grace_period_seconds, engine=svc.spec.engine.type)
    state.calls[op.op_id] = asyncio.get_running_loop().create_task(coro)
