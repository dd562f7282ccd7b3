"""FineTuneJob planning: phases, the SIGTERM checkpoint before preemption (read back from the trainer's metrics),
resume, bad input."""

from __future__ import annotations

from controllers.planners.finetune import TrainerReport, plan_job
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


def test_preemption_sends_sigterm_then_counts_clean_once_the_checkpoint_step_is_read_back() -> None:
    j = job(status={"phase": "Running", "attempt": 1, "step": 40}, annotations={L.PREEMPT: "room for serving"})
    signal = plan_job(j, "uid", [worker(1)], TrainerReport(step=40, checkpoint_step=30), set(), NOW)
    # Recorded first; the SIGTERM (deleting the workers) follows once that status is what the next pass reads.
    assert signal.status["phase"] == "Checkpointing" and signal.delete == []
    assert signal.status["checkpointRequest"]["step"] == 40 and signal.status["lastCheckpoint"]["step"] == 30
    j = job(status=signal.status, annotations={L.PREEMPT: "room for serving"})
    sent = plan_job(j, "uid", [worker(1)], TrainerReport(step=41, checkpoint_step=30), set(), NOW + 1)
    assert sent.status["phase"] == "Checkpointing" and sent.delete == ["ft-a1-w0"] and not sent.delete_now
    terminating = [worker(1, deleting=True)]
    waiting = plan_job(j, "uid", terminating, TrainerReport(step=41, checkpoint_step=30), set(), NOW + 1)
    assert waiting.status["phase"] == "Checkpointing" and waiting.delete == []
    done = plan_job(j, "uid", terminating, TrainerReport(step=41, checkpoint_step=41), set(), NOW + 2)
    assert done.status["phase"] == "Preempted" and done.status["preemptions"] == 1
    assert done.status["lastCheckpoint"] == {
        "path": "pvc://ebbtide-checkpoints/ns/ft/checkpoint-00000041",
        "step": 41,
        "time": done.status["lastCheckpoint"]["time"],
    }
    assert "checkpoint confirmed" in done.events[-1][2]


def test_workers_gone_before_the_read_back_leave_it_to_the_resumed_trainer() -> None:
    asked = {"phase": "Checkpointing", "attempt": 1, "step": 40, "checkpointRequest": {"step": 40, "time": "x"}}
    j = job(status=asked, annotations={L.PREEMPT: "room"})
    gone = plan_job(j, "uid", [], TrainerReport(), set(), NOW)
    assert gone.status["phase"] == "Preempted" and "next attempt reports" in gone.events[-1][2]
    resumed = job(status={**gone.status, "phase": "Preempted"})
    nxt = plan_job(resumed, "uid", [], TrainerReport(), set(), NOW + 1)
    assert nxt.create[0]["metadata"]["name"] == "ft-a2-w0" and "checkpointRequest" not in nxt.status
    running = job(status={**nxt.status, "phase": "Pending"})
    read_back = plan_job(running, "uid", [worker(2)], TrainerReport(step=40, resumed_from=40), set(), NOW + 2)
    assert read_back.status["resumedFromStep"] == 40
    assert any(e[1] == "Resumed" and "step 40" in e[2] for e in read_back.events)


def test_preemption_deadline_deletes_the_workers_at_once() -> None:
    asked = {"phase": "Checkpointing", "attempt": 1, "checkpointRequest": {"step": 40, "time": "x"}}
    j = job(status=asked, annotations={L.PREEMPT: "urgent", L.PREEMPT_DEADLINE: str(NOW - 1)})
    plan = plan_job(j, "uid", [worker(1, deleting=True)], TrainerReport(step=40, checkpoint_step=30), set(), NOW)
    assert plan.status["phase"] == "Preempted" and "deadline" in plan.events[-1][2]
    assert plan.delete == ["ft-a1-w0"] and plan.delete_now


def test_every_attempt_gets_the_same_command_line_the_trainer_resumes_by_itself() -> None:
    j = job(status={"phase": "Preempted", "attempt": 1, "lastCheckpoint": {"path": "/ck/41", "step": 41}})
    plan = plan_job(j, "uid", [], TrainerReport(), set(), NOW)
    first = plan_job(job(), "uid", [], TrainerReport(), set(), NOW).create[0]
    assert plan.create[0]["metadata"]["name"] == "ft-a2-w0"
    assert plan.create[0]["spec"]["containers"][0]["args"] == first["spec"]["containers"][0]["args"]
    assert plan.create[0]["spec"]["terminationGracePeriodSeconds"] == 120


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


def test_a_trainer_that_names_a_bad_input_fails_the_job_without_retries() -> None:
    j = job(status={"phase": "Running", "attempt": 1, "failures": 0}, backoffLimit=3)
    bad = worker(1, phase="Failed", message="--dataset: cannot read /data/x.jsonl: No such file")
    plan = plan_job(j, "u", [bad], TrainerReport(), set(), NOW)
    assert plan.status["phase"] == "Failed" and plan.create == []
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidTrainerInput" and ready["message"].startswith("spec.dataset.uri: --dataset")
    assert plan.events[-1][1] == "InvalidTrainerInput"


def test_success_records_where_the_adapter_is() -> None:
    done = plan_job(
        job(status={"phase": "Running", "attempt": 1}), "u", [worker(1, phase="Succeeded")], TrainerReport(), set(), NOW
    )
    assert done.status["adapter"] == "pvc://ebbtide-checkpoints/ns/ft/adapter"
