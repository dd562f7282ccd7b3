"""A MoE replica's width change as one operation: which path, then one pure step at a time.

Pure: the shell observes (joining pods, the engine's answer to `POST /scale_elastic_ep`, a canary completion,
requests in flight) and applies the actions; time is a parameter. The operation record is plain data the shell
keeps on the replica (an annotation), so a restarted operator resumes it, and its id makes every step idempotent.

Phases, in order: `Joining` (scale-up: the joining rank pods are created as one gang and must become Ready) ->
`Holding` (the router stops sending to the instance; what runs finishes, which spares the requests vLLM would
abort on a scale-down) -> `Resizing` (the one call to the engine) -> `Canary` (one completion at the new width) ->
`Retiring` (scale-down: the retired ranks' pods go only now, after the engine has shut those ranks down) ->
`Done`. Before the engine commits (any failure, refusal or timeout up to and including `Resizing`) the operation
rolls back: the joiners are deleted and traffic resumes at the old width. controllers/shells/rescaling.py drives
it for services with `parallelism.elasticExpert`, one replica at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum

from catalogue.gpus import GPUProfile
from catalogue.models import ModelSpec
from crds.reasons import ConditionType, Reason
from packer.experts import ExpertLayout, LayoutRefused, contiguous_layout, plan_for_model


class Path(StrEnum):
    """How a width change is carried out."""

    IN_PLACE = "in-place"  # the engine's elastic EP
    WHOLE_REPLICA = "whole-replica"  # replicas of the old width added or drained instead


class Phase(StrEnum):
    """Where an in-place width change stands."""

    JOINING = "Joining"
    HOLDING = "Holding"
    RESIZING = "Resizing"
    CANARY = "Canary"
    RETIRING = "Retiring"
    DONE = "Done"
    ROLLING_BACK = "RollingBack"
    FAILED = "Failed"


class Action(StrEnum):
    """What the shell does for a step (each is idempotent under the operation id)."""

    CREATE_JOINERS = "CreateJoiners"
    DELETE_JOINERS = "DeleteJoiners"
    HOLD_TRAFFIC = "HoldTraffic"
    RESUME_TRAFFIC = "ResumeTraffic"
    CALL_SCALE = "CallScale"
    CANARY = "Canary"
    DELETE_RETIRED = "DeleteRetired"


def choose_path(
    engine: str, architecture: str, from_width: int, to_width: int, elastic_enabled: bool
) -> tuple[Path, str]:
    """In place where the engine can resize itself, else whole replicas; the reason says which and why."""
    if architecture != "moe":
        return Path.WHOLE_REPLICA, "a dense model has no expert parallelism to resize"
    if not elastic_enabled:
        return Path.WHOLE_REPLICA, f"{engine} runs without elastic EP; scaling by whole replicas"
    if engine == "sglang" and to_width < from_width:
        return Path.WHOLE_REPLICA, "SGLang's elastic EP only grows; narrowing by whole replicas"
    return Path.IN_PLACE, f"{engine} resizes in place from EP {from_width} to EP {to_width}"


def replaced_to_narrow(engine: str, architecture: str, asked: int, widths: Mapping[int, int]) -> set[int]:
    """Elastic replicas running wider than asked on an engine that cannot narrow in place (SGLang only grows):
    they are replaced whole, drained first like an outdated gang, and start again at the width asked for."""
    return {
        r
        for r, width in widths.items()
        if width > asked and choose_path(engine, architecture, width, asked, True)[0] == Path.WHOLE_REPLICA
    }


def operation_id(service_uid: str, replica: int, from_width: int, to_width: int, generation: int) -> str:
    """The same id for the same requested change, so a repeated step does nothing twice."""
    digest = hashlib.sha256(f"{service_uid}/{replica}/{from_width}/{to_width}/{generation}".encode()).hexdigest()
    return f"rescale-{digest[:12]}"


@dataclass(frozen=True)
class Timeouts:
    """How long each phase may take before the operation rolls back (seconds)."""

    joining_s: float = 900.0
    holding_s: float = 120.0  # also the drain_timeout sent to vLLM
    resizing_s: float = 600.0
    canary_s: float = 60.0
    settle_s: float = 0.0  # Holding lasts at least this long: the routers' time to let go of the instance


@dataclass(frozen=True)
class Operation:
    """One width change of one replica, as stored between steps."""

    op_id: str
    replica: int
    from_width: int
    to_width: int
    phase: Phase
    phase_since_s: float
    message: str = ""
    layout: tuple[tuple[int, ...], ...] = ()  # the planned layout: per rank, the logical expert in each slot
    failure: str = ""  # the reason a rollback began with, kept for the condition once it has finished

    @property
    def joining(self) -> int:
        """Rank pods that join (0 when narrowing)."""
        return max(0, self.to_width - self.from_width)

    @property
    def retired_ranks(self) -> tuple[int, ...]:
        """Ranks that leave once the engine has shut them down (the engine retires the highest)."""
        return tuple(range(self.to_width, self.from_width))


@dataclass(frozen=True)
class Observation:
    """What the shell saw of the replica since the last step."""

    joiners_ready: bool = False
    joiners_failed: bool = False
    inflight: int = 0  # requests the instance still runs
    scale_status: int | None = None  # HTTP status of POST /scale_elastic_ep, None until answered
    canary_ok: bool | None = None
    retired_gone: bool = False
    joiners_gone: bool = False


@dataclass(frozen=True)
class Step:
    """The operation after this step, what to do now, and the reason to report."""

    op: Operation
    actions: tuple[Action, ...]
    reason: Reason
    message: str


def start(op_id: str, replica: int, from_width: int, to_width: int, now: float) -> Step:
    """Begin a width change (the layout has already been planned and checked by packer/experts.py)."""
    if from_width == to_width:
        raise ValueError(f"replica {replica} already runs at EP {to_width}")
    if to_width > from_width:
        op = Operation(op_id, replica, from_width, to_width, Phase.JOINING, now)
        message = f"replica {replica}: {op.joining} joining rank pod(s) for EP {from_width} -> {to_width}"
        return Step(op, (Action.CREATE_JOINERS,), Reason.RESCALING, message)
    op = Operation(op_id, replica, from_width, to_width, Phase.HOLDING, now)
    message = f"replica {replica}: holding traffic to narrow EP {from_width} -> {to_width}"
    return Step(op, (Action.HOLD_TRAFFIC,), Reason.RESCALING, message)


def advance(op: Operation, seen: Observation, now: float, limits: Timeouts = Timeouts()) -> Step:
    """The next step of an operation given what the shell observed at `now`."""
    waited = now - op.phase_since_s
    where = f"replica {op.replica} EP {op.from_width} -> {op.to_width}"

    def go(phase: Phase, actions: tuple[Action, ...], message: str, reason: Reason = Reason.RESCALING) -> Step:
        return Step(replace(op, phase=phase, phase_since_s=now, message=message), actions, reason, message)

    def stay(message: str) -> Step:
        return Step(op, (), Reason.RESCALING, message)

    def roll_back(reason: Reason, why: str) -> Step:
        actions = (Action.DELETE_JOINERS, Action.RESUME_TRAFFIC) if op.joining else (Action.RESUME_TRAFFIC,)
        message = f"{where}: {why}; rolling back to EP {op.from_width}"
        return Step(
            replace(op, phase=Phase.ROLLING_BACK, phase_since_s=now, message=message, failure=reason),
            actions,
            reason,
            message,
        )

    if op.phase == Phase.JOINING:
        if seen.joiners_failed:
            return roll_back(Reason.RESCALE_FAILED, "a joining rank pod failed")
        if seen.joiners_ready:
            return go(Phase.HOLDING, (Action.HOLD_TRAFFIC,), f"{where}: joiners ready; holding traffic")
        if waited > limits.joining_s:
            return roll_back(Reason.RESCALE_TIMED_OUT, f"joiners not ready after {limits.joining_s:g} s")
        return stay(f"{where}: waiting for {op.joining} joining rank pod(s)")
    if op.phase == Phase.HOLDING:
        if seen.inflight == 0 and waited >= limits.settle_s:
            return go(Phase.RESIZING, (Action.CALL_SCALE,), f"{where}: instance idle; resizing")
        if waited > limits.holding_s:
            return roll_back(
                Reason.RESCALE_TIMED_OUT, f"{seen.inflight} request(s) still running after {limits.holding_s:g} s"
            )
        if seen.inflight == 0:
            return stay(f"{where}: routers letting go of the instance")
        return stay(f"{where}: {seen.inflight} request(s) finishing before the resize")
    if op.phase == Phase.RESIZING:
        status = seen.scale_status
        if status == 200:
            return go(Phase.CANARY, (Action.CANARY,), f"{where}: engine resized; canary request")
        if status == 503:
            return stay(f"{where}: the engine is in its commit window")
        if status == 404:
            # vLLM before elastic EP (and an engine started without it) has no such route: nothing moved.
            why = "the engine has no /scale_elastic_ep (HTTP 404): an image without elastic EP; whole replicas instead"
            return roll_back(Reason.ELASTIC_EP_UNAVAILABLE, why)
        if status is not None:
            meaning = {400: "refused the width", 408: "could not drain in time", 500: "failed to scale"}.get(
                status, f"answered {status}"
            )
            return roll_back(Reason.ENGINE_REFUSED_RESCALE, f"the engine {meaning} (HTTP {status})")
        if waited > limits.resizing_s:
            return roll_back(Reason.RESCALE_TIMED_OUT, f"no answer from the engine after {limits.resizing_s:g} s")
        return stay(f"{where}: waiting for the engine")
    if op.phase == Phase.CANARY:
        if seen.canary_ok:
            if op.retired_ranks:
                message = f"{where}: serving at EP {op.to_width}; releasing ranks {list(op.retired_ranks)}"
                return go(Phase.RETIRING, (Action.RESUME_TRAFFIC, Action.DELETE_RETIRED), message)
            return go(Phase.DONE, (Action.RESUME_TRAFFIC,), f"{where}: serving at EP {op.to_width}", Reason.RESCALED)
        if seen.canary_ok is False or waited > limits.canary_s:
            # The engine has committed: there is no width to roll back to in place; the gang restarts whole.
            message = f"{where}: the canary failed after the resize; the replica restarts"
            return go(Phase.FAILED, (Action.RESUME_TRAFFIC,), message, Reason.RESCALE_FAILED)
        return stay(f"{where}: waiting for the canary")
    if op.phase == Phase.RETIRING:
        if seen.retired_gone:
            return go(Phase.DONE, (), f"{where}: retired ranks released", Reason.RESCALED)
        return stay(f"{where}: releasing retired ranks")
    failure = Reason(op.failure) if op.failure in {r.value for r in Reason} else Reason.RESCALE_FAILED
    if op.phase == Phase.ROLLING_BACK:
        if seen.joiners_gone or not op.joining:
            return go(Phase.FAILED, (), op.message, failure)
        return Step(op, (Action.DELETE_JOINERS,), failure, op.message)
    return Step(op, (), Reason.RESCALED if op.phase == Phase.DONE else failure, op.message)


def conditions_for(step: Step) -> tuple[tuple[str, bool, Reason], tuple[str, bool, Reason]]:
    """(type, status, reason) of the Rescaling and RescaleFailed conditions after a step."""
    phase = step.op.phase
    active = phase not in (Phase.DONE, Phase.FAILED)
    failed = phase in (Phase.FAILED, Phase.ROLLING_BACK)
    return (
        (ConditionType.RESCALING, active, step.reason if active else Reason.RESCALED),
        (ConditionType.RESCALE_FAILED, failed, step.reason if failed else Reason.RESCALED),
    )


@dataclass(frozen=True)
class Begin:
    """The outcome of asking for a width change: a started operation, a fallback, or a refusal."""

    path: Path
    reason: Reason
    message: str
    step: Step | None = None
    expert_layout: dict[str, list[int]] | None = None  # status.expertLayout: rank -> logical expert per slot


def begin(
    model: ModelSpec,
    gpu: GPUProfile,
    engine: str,
    elastic_enabled: bool,
    load: Sequence[float],
    current: ExpertLayout,
    replica: int,
    to_width: int,
    op_id: str,
    now: float,
    *,
    tensor_parallel: int = 1,
    free_gpus: int | None = None,
) -> Begin:
    """Choose the path, plan and check the layout (refused before anything moves), and start the operation."""
    path, why = choose_path(engine, model.architecture, current.width, to_width, elastic_enabled)
    if path == Path.WHOLE_REPLICA:
        return Begin(path, Reason.ELASTIC_EP_UNAVAILABLE, why)
    try:
        plan = plan_for_model(model, gpu, load, current, to_width, tensor_parallel=tensor_parallel, free_gpus=free_gpus)
    except LayoutRefused as refused:
        return Begin(path, Reason.RESCALE_REFUSED, f"EP {current.width} -> {to_width} refused: {refused}")
    step = start(op_id, replica, current.width, to_width, now)
    step = replace(step, op=replace(step.op, layout=plan.layout.ranks))
    layout = {str(r): list(slots) for r, slots in enumerate(plan.layout.ranks)}
    return Begin(path, Reason.RESCALING, f"{why}; {'; '.join(plan.explanation)}", step, layout)


def encode(op: Operation) -> str:
    """The operation as the annotation that carries it between steps (and across operator restarts)."""
    return json.dumps(asdict(op), sort_keys=True, separators=(",", ":"))


def decode(raw: str | None) -> Operation | None:
    """The operation an annotation carries; None when there is none or it cannot be read."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return Operation(
            str(data["op_id"]),
            int(data["replica"]),
            int(data["from_width"]),
            int(data["to_width"]),
            Phase(data["phase"]),
            float(data["phase_since_s"]),
            str(data.get("message", "")),
            tuple(tuple(int(e) for e in slots) for slots in data.get("layout", ())),
            str(data.get("failure", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def active(op: Operation | None) -> bool:
    """Whether an operation still has steps to take."""
    return op is not None and op.phase not in (Phase.DONE, Phase.FAILED)


def next_replica(widths: Mapping[int, int], ready: Mapping[int, bool], desired: int) -> int | None:
    """The replica to resize next: the lowest-numbered Ready one not at the desired width. One at a time, so the
    others keep serving while it is held."""
    for replica in sorted(widths):
        if widths[replica] != desired and ready.get(replica, False):
            return replica
    return None


def current_layout(last: Operation | None, experts: int, width: int) -> ExpertLayout:
    """The layout a replica runs: the one its last finished change planned for this width, else the engine's
    starting one."""
    if last is not None and last.phase == Phase.DONE and last.to_width == width and len(last.layout) == width:
        return ExpertLayout(last.layout)
    return contiguous_layout(experts, width)


def gpus_per_rank(pod_gpus: int, width: int) -> int:
    """GPUs of one expert-parallel rank: the entry pod's GPUs over the width its engine started with."""
    return max(1, pod_gpus // max(1, width))
