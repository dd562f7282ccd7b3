"""How an elastic MoE service grows: widen its expert parallelism in place, or add whole replicas.

Pure: the autoscaler has decided how many replicas' worth of capacity the service needs; this picks the path that
brings that capacity online sooner by the catalogue's startup model, a whole replica's cold start (image pull,
every weight from storage, engine init) against the in-place resize of every replica, one at a time (the joining
ranks' pod start, their weight pull from the serving ranks, the commit's 503 window; catalogue/elastic.py). A tie
goes to whole replicas, which never take an instance out of routing. The message names the choice and both times.
When demand falls, a width the autoscaler widened is narrowed back before any replica goes (`choose_narrowing`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from autoscaler.profile import engine_profile
from autoscaler.types import SLO
from catalogue.elastic import DEFAULT_ELASTIC, ElasticCalibration, resize_timings
from catalogue.gpus import GPUProfile
from catalogue.models import ModelSpec
from catalogue.perf import PerfModel
from crds.reasons import Reason
from packer.experts import LayoutRefused, check_width, contiguous_layout


class Growth(StrEnum):
    """What the autoscaler does for more capacity."""

    WIDEN = "widen-expert-parallelism"
    REPLICAS = "add-replicas"
    WAIT = "wait"  # a widening is under way: its capacity is on its way


@dataclass(frozen=True)
class StartupModel:
    """Startup constants shared by both paths: a new pod pulls the image; a cold start reads every weight."""

    image_pull_s: float = 60.0
    load_gbps: float = 2.0


@dataclass(frozen=True)
class GrowthChoice:
    """The path, the spec it asks for (replicas, expert width), both estimates (seconds), and why."""

    growth: Growth
    replicas: int
    width: int
    replica_s: float  # a whole replica's cold start
    widen_s: float | None  # widening every replica one at a time; None when no width up to maxExpert serves
    window_s: float  # the 503 window of one replica's resize (0 when not widening)
    reason: Reason
    message: str


def choose_growth(
    model: ModelSpec,
    gpu: GPUProfile,
    slo: SLO,
    *,
    replicas: int,
    wanted: int,
    width: int,
    max_width: int,
    rank_gpus: int = 1,
    unavailable: str | None = None,
    in_progress: bool = False,
    replica_start_s: float | None = None,
    joiner_start_s: float | None = None,
    startup: StartupModel = StartupModel(),
    cal: ElasticCalibration = DEFAULT_ELASTIC,
) -> GrowthChoice:
    """For `wanted` replicas' worth of capacity where `replicas` run at EP `width`: widen (at most to
    `max_width`) or add replicas. `unavailable` says why the service has no elastic EP (whole replicas then);
    `replica_start_s` and `joiner_start_s` are measured pod starts (a whole replica's, a joining rank pod's), which
    replace the modelled ones."""
    if wanted <= replicas:
        raise ValueError(f"choose_growth is for more capacity: {wanted} wanted, {replicas} running")
    if replica_start_s is None:
        perf = PerfModel(model, gpu, rank_gpus, expert_parallel=width)
        replica_start_s = perf.cold_start_seconds(startup.image_pull_s, startup.load_gbps)
    more = wanted - replicas

    def replicas_because(why: str, widen_s: float | None = None, reason: Reason = Reason.AUTOSCALED) -> GrowthChoice:
        # With a widening estimate, `why` already names both times.
        online = "" if widen_s is not None else f", online in ~{replica_start_s:.0f} s"
        message = f"{more} whole replica(s) at EP {width}{online}: {why}"
        return GrowthChoice(Growth.REPLICAS, wanted, width, replica_start_s, widen_s, 0.0, reason, message)

    if unavailable is not None:
        return replicas_because(unavailable, reason=Reason.ELASTIC_EP_UNAVAILABLE)
    if in_progress:
        message = f"holding {replicas} replica(s): an expert-parallel widening is under way"
        return GrowthChoice(Growth.WAIT, replicas, width, replica_start_s, None, 0.0, Reason.RESCALING, message)
    if replicas < 1:
        return replicas_because("no replica runs to widen")
    if width >= max_width:
        return replicas_because(f"EP {width} is already parallelism.maxExpert")
    found = _narrowest_width(model, gpu, slo, replicas, wanted, width, max_width, rank_gpus)
    if isinstance(found, str):
        return replicas_because(found)
    to_width, slots = found, len(contiguous_layout(model.experts, width).ranks[0])
    timings = resize_timings(model, width, to_width, slots, tensor_parallel=rank_gpus, cal=cal)
    # One replica at a time (controllers/shells/rescaling.py): the others serve while it is held.
    joiner_s = startup.image_pull_s if joiner_start_s is None else joiner_start_s
    widen_s = replicas * (joiner_s + timings.total_s)
    both = (
        f"widening EP {width} -> {to_width} on {replicas} replica(s) ~{widen_s:.0f} s "
        f"({timings.commit_s:.0f} s 503 window each) vs. {more} whole replica(s) ~{replica_start_s:.0f} s"
    )
    tie = math.isclose(widen_s, replica_start_s)
    if widen_s < replica_start_s and not tie:
        message = f"widen expert parallelism: {both}"
        return GrowthChoice(
            Growth.WIDEN, replicas, to_width, replica_start_s, widen_s, timings.commit_s, Reason.AUTOSCALED, message
        )
    verdict = "a tie goes to whole replicas" if tie else "whole replicas sooner"
    return replicas_because(f"{both}; {verdict}", widen_s)


def _narrowest_width(
    model: ModelSpec,
    gpu: GPUProfile,
    slo: SLO,
    replicas: int,
    wanted: int,
    width: int,
    max_width: int,
    rank_gpus: int,
) -> int | str:
    """The narrowest width whose replicas carry `wanted` replicas' worth at `width`, or why there is none."""
    per_replica = engine_profile(model, gpu, rank_gpus, slo, expert_parallel=width).request_rate
    slots = len(contiguous_layout(model.experts, width).ranks[0])
    need = wanted * per_replica
    best = 0.0
    last_refusal = ""
    for w in range(width + 1, max_width + 1):
        try:
            check_width(model, gpu, w, slots, tensor_parallel=rank_gpus, current_width=width)
        except LayoutRefused as refused:
            last_refusal = f"; EP {w}: {refused}"
            continue
        serves = replicas * engine_profile(model, gpu, rank_gpus, slo, expert_parallel=w).request_rate
        if serves >= need:
            return w
        best = max(best, serves)
    return (
        f"no width up to maxExpert {max_width} carries {need:.1f} req/s on {replicas} replica(s) "
        f"(at most {best:.1f}){last_refusal}"
    )


@dataclass(frozen=True)
class Narrowing:
    """Narrow every replica to `width` and keep the replica count: why, in the decision's reason and Event."""

    width: int
    message: str


def choose_narrowing(
    model: ModelSpec,
    gpu: GPUProfile,
    slo: SLO,
    *,
    replicas: int,
    wanted: int,
    width: int,
    base_width: int,
    rank_gpus: int = 1,
) -> Narrowing | None:
    """Where the autoscaler widened EP from `base_width` to `width` and now wants `wanted` < `replicas` replicas
    at `width`: the narrowest width, down to `base_width`, whose `replicas` carry that capacity; None when no
    narrower width does (the replicas go instead). Undoing the widening first gives back the GPUs the autoscaler
    added in place, and keeps every replica's KV cache and routing."""
    if wanted >= replicas or width <= base_width or replicas < 1:
        return None
    need = wanted * engine_profile(model, gpu, rank_gpus, slo, expert_parallel=width).request_rate
    for w in range(base_width, width):
        serves = replicas * engine_profile(model, gpu, rank_gpus, slo, expert_parallel=w).request_rate
        if serves >= need:
            message = (
                f"narrow expert parallelism EP {width} -> {w} on {replicas} replica(s) (widened from EP "
                f"{base_width}): they carry {serves:.1f} req/s at EP {w}, {wanted} replica(s) at EP {width} "
                f"{need:.1f}; the replica count stays"
            )
            return Narrowing(w, message)
    return None
