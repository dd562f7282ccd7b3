"""FineTuneJob planning: phases, checkpoint before preemption, resume from the recorded checkpoint."""

from __future__ import annotations

from controllers.planners.finetune import TrainerReport, checkpoint_due, plan_job
from crds import labels as L
from tests.unit.controllers.builders import job, worker

NOW = 10_000.0


def test_first_pass_creates_attempt_one() -> None:
    plan = plan_job(job(), "uid", [], TrainerReport(), set(), NOW)
    assert [p["metadata"]["name"] for p in plan.create] == ["ft-a1-w0"]
    assert plan.status["phase"] == "Pending" and plan.status["attempt"] == 1


def test_running_when_all_workers_run() -> None:
    plan = plan_job(
        job(status={"phase": "Pending", "attempt": 1}), "uid", [worker(1)], TrainerReport(step=5), set(), NOW
    )
    assert plan.status["phase"] == "Running" and plan.status["step"] == 5


def test_preemption_waits_for_a_checkpoint_then_evicts() -> None:
    j = job(status={"phase": "Running", "attempt": 1}, annotations={L.PREEMPT: "room for serving"})
    assert checkpoint_due(j, [worker(1)], NOW) == "preemption"
    waiting = plan_job(j, "uid", [worker(1)], TrainerReport(step=40), set(), NOW)
    assert waiting.status["phase"] == "Checkpointing" and waiting.delete == []
    done = plan_job(
        j, "uid", [worker(1)], TrainerReport(step=41, checkpoint_path="/ck/41", checkpoint_step=41), set(), NOW
    )
    assert done.status["phase"] == "Preempted" and done.delete == ["ft-a1-w0"]
    assert done.status["lastCheckpoint"]["step"] == 41 and done.status["preemptions"] == 1


def test_preemption_deadline_evicts_without_fresh_checkpoint() -> None:
    j = job(
        status={"phase": "Running", "attempt": 1},
        annotations={L.PREEMPT: "urgent", L.PREEMPT_DEADLINE: str(NOW - 1)},
    )
    plan = plan_job(j, "uid", [worker(1)], TrainerReport(step=40), set(), NOW)
    assert plan.status["phase"] == "Preempted" and "deadline" in plan.events[-1][2]


def test_resume_passes_the_checkpoint_to_the_new_attempt() -> None:
    j = job(status={"phase": "Preempted", "attempt": 1, "lastCheckpoint": {"path": "/ck/41", "step": 41}})
    plan = plan_job(j, "uid", [], TrainerReport(), set(), NOW)
    args = plan.create[0]["spec"]["containers"][0]["args"]
    assert plan.create[0]["metadata"]["name"] == "ft-a2-w0"
    assert args[args.index("--resume-from") + 1] == "/ck/41" and plan.status["resumedFromStep"] == 41


def test_stays_preempted_while_the_request_stands() -> None:
    j = job(status={"phase": "Preempted", "attempt": 1}, annotations={L.PREEMPT: "x"})
    assert plan_job(j, "uid", [], TrainerReport(), set(), NOW).create == []


def test_success_and_failure_backoff() -> None:
    ok = plan_job(
        job(status={"phase": "Running", "attempt": 1}), "u", [worker(1, phase="Succeeded")], TrainerReport(), set(), NOW
    )
    assert ok.status["phase"] == "Succeeded"
    j = job(status={"phase": "Running", "attempt": 1, "failures": 0}, backoffLimit=0)
    failed = plan_job(j, "u", [worker(1, phase="Failed")], TrainerReport(), set(), NOW)
    assert failed.status["phase"] == "Failed"
    j = job(status={"phase": "Running", "attempt": 1, "failures": 0}, backoffLimit=2)
    retried = plan_job(j, "u", [worker(1, phase="Failed")], TrainerReport(), set(), NOW)
    assert retried.status["attempt"] == 2 and [p["metadata"]["name"] for p in retried.create] == ["ft-a2-w0"]


def test_interval_checkpoint_is_due() -> None:
    j = job(
        status={"phase": "Running", "attempt": 1, "startTime": "1970-01-01T00:00:00Z"},
        checkpoint={"intervalSeconds": 60},
    )
    assert checkpoint_due(j, [worker(1)], 61.0) == "interval"
    assert checkpoint_due(j, [worker(1)], 30.0) is None
