"""A MoE replica's width change as an operation: path, refusals, each phase, rollback before the commit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from catalogue.gpus import lookup_gpu
from catalogue.models import lookup_model
from controllers.planners.rescale import (
    Action,
    Observation,
    Operation,
    Path,
    Phase,
    Step,
    Timeouts,
    advance,
    begin,
    choose_path,
    conditions_for,
    current_layout,
    decode,
    encode,
    gpus_per_rank,
    next_replica,
    operation_id,
    start,
)
from crds.reasons import ConditionType, Reason
from packer.experts import contiguous_layout

V2 = lookup_model("deepseek-v2-lite")
H100 = lookup_gpu("H100")
LOAD = [float(64 - i) for i in range(64)]


def walk(step: Step, *seen: tuple[float, Observation]) -> list[Step]:
    """Advance an operation through observations at the given times."""
    steps = [step]
    for now, obs in seen:
        steps.append(advance(steps[-1].op, obs, now))
    return steps


class TestPath:
    @pytest.mark.parametrize(
        ("engine", "arch", "old", "new", "elastic", "path"),
        [
            ("vllm", "moe", 2, 4, True, Path.IN_PLACE),
            ("vllm", "moe", 4, 2, True, Path.IN_PLACE),
            ("sglang", "moe", 2, 4, True, Path.IN_PLACE),
            ("sglang", "moe", 4, 2, True, Path.WHOLE_REPLICA),  # SGLang only grows
            ("vllm", "moe", 2, 4, False, Path.WHOLE_REPLICA),  # elastic EP off: an older image or no flags
            ("vllm", "dense", 1, 2, True, Path.WHOLE_REPLICA),
        ],
    )
    def test_in_place_only_where_the_engine_can(
        self, engine: str, arch: str, old: int, new: int, elastic: bool, path: Path
    ) -> None:
        chosen, why = choose_path(engine, arch, old, new, elastic)
        assert chosen == path and why

    def test_fallback_is_reported_with_its_reason(self) -> None:
        assert V2 is not None and H100 is not None
        out = begin(V2, H100, "sglang", True, LOAD, contiguous_layout(64, 4), 0, 2, "op", 0.0)
        assert out.path == Path.WHOLE_REPLICA and out.reason == Reason.ELASTIC_EP_UNAVAILABLE
        assert "only grows" in out.message and out.step is None


class TestBegin:
    def test_a_width_that_cannot_hold_the_experts_is_refused_before_anything_moves(self) -> None:
        assert V2 is not None and H100 is not None
        out = begin(V2, H100, "vllm", True, LOAD, contiguous_layout(64, 2), 0, 1, "op", 0.0)
        assert out.reason == Reason.RESCALE_REFUSED and out.step is None
        assert "the minimum width is 2" in out.message

    def test_too_few_free_gpus_is_refused_with_the_numbers(self) -> None:
        assert V2 is not None and H100 is not None
        out = begin(V2, H100, "vllm", True, LOAD, contiguous_layout(64, 2), 0, 4, "op", 0.0, free_gpus=1)
        assert (
            out.reason == Reason.RESCALE_REFUSED and "needs 2 GPUs" in out.message and "only 1 are free" in out.message
        )

    def test_widening_starts_with_the_joiners_and_plans_the_layout(self) -> None:
        assert V2 is not None and H100 is not None
        out = begin(V2, H100, "vllm", True, LOAD, contiguous_layout(64, 2), 3, 4, "op", 10.0, free_gpus=8)
        assert out.step is not None and out.step.actions == (Action.CREATE_JOINERS,)
        assert out.step.op.phase == Phase.JOINING and out.step.op.joining == 2
        assert out.expert_layout is not None and sorted(out.expert_layout) == ["0", "1", "2", "3"]
        assert "expert(s) moved" in out.message


class TestOperation:
    def test_ids_are_stable_for_the_same_change_and_differ_otherwise(self) -> None:
        assert operation_id("uid", 0, 2, 4, 7) == operation_id("uid", 0, 2, 4, 7)
        assert operation_id("uid", 0, 2, 4, 7) != operation_id("uid", 0, 2, 4, 8)

    def test_widening_end_to_end(self) -> None:
        steps = walk(
            start("op", 0, 2, 4, 0.0),
            (5.0, Observation()),
            (60.0, Observation(joiners_ready=True)),
            (61.0, Observation(inflight=3)),
            (65.0, Observation(inflight=0)),
            (70.0, Observation()),
            (95.0, Observation(scale_status=200)),
            (96.0, Observation(canary_ok=True)),
        )
        assert [s.op.phase for s in steps] == [
            Phase.JOINING,
            Phase.JOINING,
            Phase.HOLDING,
            Phase.HOLDING,
            Phase.RESIZING,
            Phase.RESIZING,
            Phase.CANARY,
            Phase.DONE,
        ]
        assert [a for s in steps for a in s.actions] == [
            Action.CREATE_JOINERS,
            Action.HOLD_TRAFFIC,
            Action.CALL_SCALE,
            Action.CANARY,
            Action.RESUME_TRAFFIC,
        ]
        assert steps[-1].reason == Reason.RESCALED

    def test_narrowing_releases_retired_ranks_only_after_the_engine_resized(self) -> None:
        steps = walk(
            start("op", 0, 4, 2, 0.0),
            (1.0, Observation(inflight=0)),
            (8.0, Observation(scale_status=200)),
            (9.0, Observation(canary_ok=True)),
            (10.0, Observation()),
            (12.0, Observation(retired_gone=True)),
        )
        assert steps[0].actions == (Action.HOLD_TRAFFIC,) and steps[0].op.retired_ranks == (2, 3)
        retiring = steps[3]
        assert retiring.op.phase == Phase.RETIRING
        assert retiring.actions == (Action.RESUME_TRAFFIC, Action.DELETE_RETIRED)
        assert all(Action.DELETE_RETIRED not in s.actions for s in steps[:3])
        assert steps[-1].op.phase == Phase.DONE

    @pytest.mark.parametrize(("status", "word"), [(400, "refused"), (408, "drain"), (500, "failed to scale")])
    def test_an_engine_error_rolls_back_before_the_commit(self, status: int, word: str) -> None:
        steps = walk(
            start("op", 0, 2, 4, 0.0),
            (10.0, Observation(joiners_ready=True)),
            (11.0, Observation(inflight=0)),
            (20.0, Observation(scale_status=status)),
            (21.0, Observation()),
            (25.0, Observation(joiners_gone=True)),
        )
        back = steps[3]
        assert back.op.phase == Phase.ROLLING_BACK and back.reason == Reason.ENGINE_REFUSED_RESCALE
        assert back.actions == (Action.DELETE_JOINERS, Action.RESUME_TRAFFIC)
        assert word in back.message and f"HTTP {status}" in back.message
        assert steps[4].actions == (Action.DELETE_JOINERS,), "joiners are deleted until they are gone"
        assert steps[-1].op.phase == Phase.FAILED

    def test_an_engine_without_elastic_ep_falls_back_to_whole_replicas_and_says_so(self) -> None:
        steps = walk(
            start("op", 0, 2, 4, 0.0),
            (10.0, Observation(joiners_ready=True)),
            (11.0, Observation(inflight=0)),
            (20.0, Observation(scale_status=404)),
            (21.0, Observation()),
            (25.0, Observation(joiners_gone=True)),
        )
        back = steps[3]
        assert back.op.phase == Phase.ROLLING_BACK and back.reason == Reason.ELASTIC_EP_UNAVAILABLE
        assert "HTTP 404" in back.message and "whole replicas" in back.message
        assert back.actions == (Action.DELETE_JOINERS, Action.RESUME_TRAFFIC), "nothing moved: traffic resumes"
        failed = steps[-1]
        assert failed.op.phase == Phase.FAILED
        assert all(s.reason == Reason.ELASTIC_EP_UNAVAILABLE for s in steps[3:]), "the reason outlives the rollback"
        _, failed_condition = conditions_for(failed)
        assert failed_condition == (ConditionType.RESCALE_FAILED, True, Reason.ELASTIC_EP_UNAVAILABLE)
        assert decode(encode(back.op)) == back.op, "a restarted operator keeps the reason"

    def test_the_503_window_is_waited_out(self) -> None:
        steps = walk(start("op", 0, 4, 2, 0.0), (1.0, Observation()), (3.0, Observation(scale_status=503)))
        assert steps[-1].op.phase == Phase.RESIZING and steps[-1].actions == ()

    @pytest.mark.parametrize(
        ("phase", "seen", "limit"),
        [
            (Phase.JOINING, Observation(), Timeouts().joining_s),
            (Phase.HOLDING, Observation(inflight=2), Timeouts().holding_s),
            (Phase.RESIZING, Observation(), Timeouts().resizing_s),
        ],
    )
    def test_a_phase_past_its_timeout_rolls_back(self, phase: Phase, seen: Observation, limit: float) -> None:
        op = Operation("op", 0, 2, 4, phase, 100.0)
        assert advance(op, seen, 100.0 + limit).op.phase == phase, "at the limit it still waits"
        late = advance(op, seen, 100.0 + limit + 1)
        assert late.op.phase == Phase.ROLLING_BACK and late.reason == Reason.RESCALE_TIMED_OUT
        assert f"{limit:g} s" in late.message

    def test_a_failed_joiner_rolls_back(self) -> None:
        step = advance(Operation("op", 0, 2, 4, Phase.JOINING, 0.0), Observation(joiners_failed=True), 5.0)
        assert step.op.phase == Phase.ROLLING_BACK and step.reason == Reason.RESCALE_FAILED

    def test_a_failed_canary_after_the_commit_cannot_roll_back(self) -> None:
        step = advance(Operation("op", 0, 2, 4, Phase.CANARY, 0.0), Observation(canary_ok=False), 5.0)
        assert step.op.phase == Phase.FAILED and Action.DELETE_JOINERS not in step.actions
        assert "restarts" in step.message

    def test_conditions_follow_the_phase(self) -> None:
        running = start("op", 0, 2, 4, 0.0)
        assert conditions_for(running) == (
            (ConditionType.RESCALING, True, Reason.RESCALING),
            (ConditionType.RESCALE_FAILED, False, Reason.RESCALED),
        )
        failed = advance(Operation("op", 0, 2, 4, Phase.JOINING, 0.0), Observation(joiners_failed=True), 1.0)
        assert conditions_for(failed)[1] == (ConditionType.RESCALE_FAILED, True, Reason.RESCALE_FAILED)

    def test_the_same_width_is_not_an_operation(self) -> None:
        with pytest.raises(ValueError, match="already runs at EP 2"):
            start("op", 0, 2, 2, 0.0)


class TestShellSupport:
    def test_holding_lasts_until_routers_let_go_even_when_idle(self) -> None:
        step = start("op", 0, 4, 2, 0.0)
        limits = Timeouts(settle_s=3.0)
        assert advance(step.op, Observation(inflight=0), 1.0, limits).op.phase == Phase.HOLDING
        assert advance(step.op, Observation(inflight=0), 3.0, limits).actions == (Action.CALL_SCALE,)

    def test_the_operation_survives_its_annotation_with_its_layout(self) -> None:
        assert V2 is not None and H100 is not None
        got = begin(V2, H100, "vllm", True, LOAD, contiguous_layout(64, 2), 1, 4, "op-1", 5.0)
        assert got.step is not None
        op = got.step.op
        assert len(op.layout) == 4 and decode(encode(op)) == op
        assert decode("{not json") is None and decode(None) is None

    def test_one_ready_replica_at_a_time_lowest_first(self) -> None:
        assert next_replica({0: 4, 1: 2, 2: 2}, {0: True, 1: False, 2: True}, 4) == 2
        assert next_replica({0: 4, 1: 4}, {0: True, 1: True}, 4) is None

    def test_current_layout_is_the_last_finished_plan_of_that_width_else_the_engines_start(self) -> None:
        done = Operation("op", 0, 2, 4, Phase.DONE, 0.0, layout=((0, 1), (2, 3), (0, 2), (1, 3)))
        assert current_layout(done, 4, 4).ranks == done.layout
        assert current_layout(replace(done, phase=Phase.FAILED), 4, 4) == contiguous_layout(4, 4)
        assert current_layout(None, 4, 2) == contiguous_layout(4, 2)
        assert gpus_per_rank(2, 2) == 1 and gpus_per_rank(8, 2) == 4
