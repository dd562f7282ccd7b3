"""Continuous batching: token budget, chunked prefill, FCFS, sequence cap, KV accounting, preemption, roles."""

from __future__ import annotations

from collections import Counter

import pytest

from catalogue.gpus import lookup_gpu
from catalogue.models import MODEL_CATALOG
from catalogue.perf import PerfModel
from simulator.batching import BatchScheduler, RequestId, Role, SimRequest, StepResult


def make(
    model: str = "llama-3-8b", gpu: str = "H100", tp: int = 1, role: Role = "both", **kwargs: int
) -> BatchScheduler:
    profile = lookup_gpu(gpu)
    assert profile is not None
    return BatchScheduler(PerfModel(MODEL_CATALOG[model], profile, tp), role=role, **kwargs)


def run(s: BatchScheduler, until: float = 1e9) -> tuple[list[tuple[float, StepResult]], float]:
    """Step to completion; returns (end time, result) per productive step and the final time."""
    t = 0.0
    steps: list[tuple[float, StepResult]] = []
    while s.has_work() and t < until:
        r = s.step(t)
        if r.duration_s == 0 and not r.preempted:
            nxt = s.next_ready_s()
            assert nxt is not None and nxt > t, "scheduler idle while work is ready"
            t = nxt
            continue
        t += r.duration_s
        steps.append((t, r))
    return steps, t


def token_counts(steps: list[tuple[float, StepResult]]) -> Counter[RequestId]:
    return Counter(rid for _, r in steps for rid in r.tokens)


def test_single_request_prefills_once_then_decodes_one_token_per_step() -> None:
    s = make()
    s.add(SimRequest("a", 1000, 10))
    steps, _ = run(s)
    assert len(steps) == 10
    first_end, first = steps[0]
    assert first.first_tokens == ["a"] and first.prefill_tokens == 1000
    assert first_end == pytest.approx(s.perf.prefill_seconds(1000), rel=0.02)
    assert all(r.decode_seqs == 1 and r.prefill_tokens == 0 for _, r in steps[1:])
    assert steps[-1][1].finished == ["a"]
    assert token_counts(steps) == {"a": 10}


def test_long_prompt_is_prefilled_in_chunks_of_the_token_budget() -> None:
    s = make(max_num_batched_tokens=4096)
    s.add(SimRequest("long", 10_000, 2))
    steps, _ = run(s)
    assert [r.prefill_tokens for _, r in steps[:3]] == [4096, 4096, 1808]
    assert not steps[0][1].tokens and not steps[1][1].tokens
    assert steps[2][1].first_tokens == ["long"]


def test_token_budget_and_sequence_cap_hold_every_step() -> None:
    s = make(max_num_batched_tokens=2048, max_num_seqs=8)
    for i in range(30):
        s.add(SimRequest(i, 700, 20))
    steps, _ = run(s)
    for _, r in steps:
        assert r.prefill_tokens + r.decode_seqs <= 2048
        assert len(r.tokens) <= 8
    assert token_counts(steps) == {i: 20 for i in range(30)}


def test_decodes_and_prefill_chunks_share_an_iteration() -> None:
    s = make(max_num_batched_tokens=512)
    s.add(SimRequest("early", 100, 50))
    s.add(SimRequest("late", 2000, 5, arrival_s=0.05))
    steps, _ = run(s)
    mixed = [r for _, r in steps if r.decode_seqs and r.prefill_tokens]
    assert mixed, "chunked prefill should piggyback on decode iterations"
    assert all(r.prefill_tokens + r.decode_seqs <= 512 for r in mixed)


def test_first_come_first_served() -> None:
    s = make(max_num_seqs=1)
    for i, arrival in enumerate([0.0, 0.001, 0.002]):
        s.add(SimRequest(f"r{i}", 200, 3, arrival_s=arrival))
    steps, _ = run(s)
    firsts = [rid for _, r in steps for rid in r.first_tokens]
    assert firsts == ["r0", "r1", "r2"]


def test_requests_are_not_scheduled_before_they_arrive() -> None:
    s = make()
    s.add(SimRequest("later", 100, 2, arrival_s=5.0))
    assert s.step(0.0).duration_s == 0
    assert s.next_ready_s() == 5.0
    steps, _ = run(s)
    assert steps[0][0] > 5.0


def test_kv_pressure_preempts_the_newest_and_everyone_still_finishes() -> None:
    s = make("llama-2-7b", "L4")  # ~11.7k tokens of KV: 12 requests of 1,500 tokens cannot all stay
    for i in range(12):
        s.add(SimRequest(i, 1000, 500))
    steps, _ = run(s)
    preempted = [rid for _, r in steps for rid in r.preempted]
    assert preempted, "expected recompute preemption under KV pressure"
    assert 0 not in preempted, "the oldest request is never the victim"
    assert token_counts(steps) == {i: 500 for i in range(12)}
    assert s.kv_usage == 0.0 and not s.has_work()


def test_kv_usage_tracks_blocks() -> None:
    s = make()
    s.add(SimRequest("a", 160, 100))
    s.step(0.0)
    blocks = s.total_blocks
    assert s.kv_usage == pytest.approx(10 / blocks)  # 160 prompt tokens in 16-token blocks
    s.step(1.0)  # the first decode writes token 161, which opens an 11th block
    assert s.kv_usage == pytest.approx(11 / blocks)
    assert s.num_running == 1 and s.num_waiting == 0


def test_abort_frees_kv_cache() -> None:
    s = make()
    s.add(SimRequest("a", 4000, 100))
    s.add(SimRequest("b", 10, 10, arrival_s=100.0))
    s.step(0.0)
    assert s.kv_usage > 0
    assert s.abort("a") and s.abort("b")
    assert s.kv_usage == 0.0 and not s.has_work()
    assert not s.abort("a")


def test_add_rejects_bad_and_oversized_requests() -> None:
    s = make()
    with pytest.raises(ValueError, match="at least 1"):
        s.add(SimRequest("x", 0, 1))
    with pytest.raises(ValueError, match="KV cache"):
        s.add(SimRequest("x", s.max_request_tokens, 1))
    s.add(SimRequest("x", 10, 1))
    with pytest.raises(ValueError, match="already"):
        s.add(SimRequest("x", 10, 1))


def test_same_requests_give_the_same_schedule() -> None:
    def once() -> list[tuple[float, list[RequestId]]]:
        s = make(max_num_batched_tokens=1024, max_num_seqs=16)
        for i in range(40):
            s.add(SimRequest(i, 100 + 37 * i, 5 + i % 7, arrival_s=0.01 * i))
        steps, _ = run(s)
        return [(t, r.tokens) for t, r in steps]

    assert once() == once()


def test_prefill_role_generates_one_token() -> None:
    s = make(role="prefill")
    s.add(SimRequest("p", 3000, 200))
    steps, _ = run(s)
    assert token_counts(steps) == {"p": 1} and steps[-1][1].finished == ["p"]


def test_decode_role_waits_for_kv_transfer_and_skips_prefill() -> None:
    s = make(role="decode")
    s.add(SimRequest("d", 3000, 4))
    steps, _ = run(s)
    assert all(r.prefill_tokens == 0 for _, r in steps)
    transfer = s.perf.kv_transfer_seconds(3000)
    assert steps[0][0] == pytest.approx(transfer + s.perf.decode_step_seconds(1, 3000))
    assert token_counts(steps) == {"d": 4}
