"""FineTuneJob planning: worker gangs per attempt, preemption with checkpoint first, resume, completion.

The contract with the trainer (docs/finetuning.md): it checkpoints by itself (every interval) and on SIGTERM, resumes
from the `latest` checkpoint of its folder on start, and reports step, checkpoint step and resumed-from step as
Prometheus metrics. The controller never calls the trainer: it reads those metrics, and preempts by deleting the
workers with their grace period (SIGTERM)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from catalogue.gpus import GPU_RESOURCE
from catalogue.models import generic_model
from controllers.planners.conditions import report_problem, rfc3339, set_condition
from controllers.planners.engines import DEFAULT_IMAGES, adapter_uri, checkpoint_dir, failed_field, trainer_command
from controllers.planners.gangs import Owner, gpu_pod
from controllers.planners.snapshot import PodView
from controllers.planners.validation import Problem, check_fits, check_gpu_types, check_priority_class, first_problem
from crds import labels as L
from crds.finetunejob import FineTuneJob
from crds.reasons import ConditionType, EventType, Reason
from packer.checkpoint import CheckpointAction, CheckpointState, checkpoint_step

# LoRA keeps frozen BF16 weights plus small adapters and optimizer state: budget 1.2x the weights.
LORA_MEMORY_FACTOR = 1.2
QLORA_MEMORY_FACTOR = 0.35  # 4-bit base weights


@dataclass(frozen=True)
class TrainerReport:
    """What the shell read from the rank-0 trainer's metrics this pass (None: not read)."""

    step: int | None = None
    done: bool = False
    checkpoint_step: int | None = None  # the latest complete checkpoint (ebbtide_trainer_checkpoint_step)
    resumed_from: int | None = None  # the step this process resumed from (ebbtide_trainer_resumed_from_step)
    loss: float | None = None


@dataclass
class JobPlan:
    """Everything the shell must do for one FineTuneJob, and the status to write."""

    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    delete_now: bool = False  # delete without the grace period (the checkpoint deadline has passed)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    problem: Problem | None = None


def semantic_problem(job: FineTuneJob, priority_classes: Collection[str]) -> Problem | None:
    """The first reason this job cannot run as written, if any."""
    s = job.spec
    factor = QLORA_MEMORY_FACTOR if s.method == "qlora" else LORA_MEMORY_FACTOR
    return first_problem(
        check_gpu_types("spec.gpu.types", s.gpu.types),
        # Training holds more than the weights (LoRA) or quantised weights (QLoRA): a model of the scaled size.
        check_fits(
            "spec.baseModel.parametersB",
            generic_model(s.base_model.parameters_b * factor, name=s.base_model.name),
            s.gpu.count,
            s.gpu.types,
        ),
        check_priority_class("spec.priorityClassName", s.priority_class_name, priority_classes),
    )


def worker_pods(job: FineTuneJob, uid: str, attempt: int, scheduler: str) -> list[dict[str, Any]]:
    """The worker gang of one attempt."""
    s, name, ns = job.spec, job.metadata.name, job.metadata.namespace or "default"
    owner = Owner("FineTuneJob", name, ns, uid)
    workers = s.workers.max
    pods = []
    for rank in range(workers):
        command, args = trainer_command(s, name, ns, rank, workers)
        pod_spec: dict[str, Any] = {
            "schedulerName": scheduler,
            "restartPolicy": "Never",
            # SIGTERM means "checkpoint now, then exit": the grace period is the trainer's time to do it.
            "terminationGracePeriodSeconds": s.checkpoint.grace_period_seconds,
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [
                {
                    "name": "trainer",
                    "image": s.trainer.image or DEFAULT_IMAGES[s.trainer.type],
                    "command": command,
                    "args": args,
                    "ports": [{"name": "control", "containerPort": s.trainer.port}],
                    "env": [
                        {
                            "name": "EBBTIDE_GPU_PRODUCT",
                            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{L.GPU_PRODUCT}']"}},
                        }
                    ],
                    # The trainer writes why it stopped here ("--dataset: cannot read ..."); the status shows it.
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "resources": {
                        "requests": {"cpu": "4", "memory": "32Gi", GPU_RESOURCE: str(s.gpu.count)},
                        "limits": {GPU_RESOURCE: str(s.gpu.count)},
                    },
                }
            ],
        }
        labels = {
            L.FINETUNE: name,
            L.ATTEMPT: str(attempt),
            L.RANK: str(rank),
            L.GANG: f"{name}-a{attempt}",
            L.ENGINE: s.trainer.type,
            L.MANAGED_BY: L.OPERATOR,
        }
        pods.append(
            gpu_pod(owner, f"{name}-a{attempt}-w{rank}", labels, workers, pod_spec, s.priority_class_name, s.gpu.types)
        )
    return pods


def plan_job(
    job: FineTuneJob,
    uid: str,
    pods: list[PodView],
    report: TrainerReport,
    priority_classes: Collection[str],
    now: float,
    scheduler_name: str = "default-scheduler",
) -> JobPlan:
    """Decide one reconcile pass of a FineTuneJob."""
    s, st = job.spec, job.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    plan, gen = JobPlan(), job.metadata.generation
    conditions: list[dict[str, Any]] = list(st.get("conditions", []))
    phase = st.get("phase") or "Pending"
    attempt = int(st.get("attempt", 0))
    st.setdefault("totalSteps", s.hyperparameters.total_steps)
    st["totalSteps"] = s.hyperparameters.total_steps

    def finish(new_phase: str) -> JobPlan:
        st["phase"] = new_phase
        st["progress"] = f"{st.get('step', 0)}/{s.hyperparameters.total_steps}"
        st["observedGeneration"] = gen
        st["conditions"] = conditions
        plan.status = st
        return plan

    name, ns = job.metadata.name, job.metadata.namespace or "default"
    folder = checkpoint_dir(s, name, ns)
    last_step = int((st.get("lastCheckpoint") or {}).get("step", -1))
    if report.checkpoint_step is not None and report.checkpoint_step > last_step:
        path = f"{folder}/{checkpoint_name(report.checkpoint_step)}"
        st["lastCheckpoint"] = {"path": path, "step": report.checkpoint_step, "time": rfc3339(now)}
        plan.events.append((EventType.NORMAL, Reason.CHECKPOINTED, f"step {report.checkpoint_step} at {path}"))
    if report.resumed_from is not None and st.get("resumedFromStep") is None and "checkpointRequest" not in st:
        st["resumedFromStep"] = report.resumed_from
        if report.resumed_from > 0:
            plan.events.append(
                (EventType.NORMAL, Reason.RESUMED, f"attempt {attempt} resumed from step {report.resumed_from}")
            )
    if report.step is not None:
        st["step"] = max(report.step, int(st.get("step", 0)))

    if phase in ("Succeeded", "Failed"):
        return finish(phase)

    problem = semantic_problem(job, priority_classes)
    if problem is not None:
        plan.problem = problem
        conditions, events = report_problem(conditions, problem.reason, problem.message, now, gen)
        plan.events += events
        return finish("Pending")

    attempt_pods = [p for p in pods if p.attempt == attempt]
    current = [p for p in attempt_pods if not p.deleting]
    resume = (st.get("lastCheckpoint") or {}).get("path")

    def next_attempt() -> int:
        """A new worker gang; its trainer resumes from `latest` by itself and reports the step it resumed from."""
        new = attempt + 1
        st["attempt"] = new
        st.pop("resumedFromStep", None)
        st.pop("checkpointRequest", None)
        plan.create = worker_pods(job, uid, new, scheduler_name)
        return new

    requested, deadline = preemption_request(job.metadata.annotations)
    if requested and phase not in ("Preempted",):
        reason = job.metadata.annotations[L.PREEMPT] or "preempted"
        asked = st.get("checkpointRequest")
        signalled = asked is not None
        # After SIGTERM the workers are terminating: they may still answer their metrics until they exit.
        workers = attempt_pods if signalled else current
        handshake = CheckpointState(
            checkpoint_first=True,
            requested=True,
            deadline=deadline,
            trainer_running=bool(workers) and all(p.phase == "Running" for p in workers),
            signalled=signalled,
            confirmed=asked is not None
            and report.checkpoint_step is not None
            and report.checkpoint_step >= int(asked["step"]),
        )
        decision = checkpoint_step(handshake, now)
        if decision.action == CheckpointAction.SIGNAL:
            # Recorded first, sent on a later pass: the pods go only once the status that says why is written,
            # so a pass that reads an older status never mistakes the SIGTERM for workers that went away.
            st["checkpointRequest"] = {"step": int(st.get("step", 0)), "time": rfc3339(now)}
        elif decision.action == CheckpointAction.WAIT:
            plan.delete = [p.name for p in current]  # SIGTERM: delete with the grace period (once: then deleting)
        if decision.action == CheckpointAction.EVICT:
            plan.delete = [p.name for p in attempt_pods]
            plan.delete_now = signalled and "deadline" in decision.reason
            st["preemptions"] = int(st.get("preemptions", 0)) + 1
            plan.events.append((EventType.WARNING, Reason.PREEMPTED, f"{reason}; workers evicted: {decision.reason}"))
            conditions = set_condition(conditions, ConditionType.PREEMPTED, True, Reason.PREEMPTED, reason, now, gen)
            conditions = set_condition(conditions, ConditionType.READY, False, Reason.PREEMPTED, reason, now, gen)
            return finish("Preempted")
        conditions = set_condition(
            conditions,
            ConditionType.READY,
            True,
            Reason.CHECKPOINTING,
            f"SIGTERM sent, checkpoint before preemption: {reason}",
            now,
            gen,
        )
        return finish("Checkpointing")

    if phase == "Preempted":
        if L.PREEMPT in job.metadata.annotations or any(not p.deleting for p in pods if p.attempt == attempt):
            return finish("Preempted")
        attempt = next_attempt()
        plan.events.append(
            (EventType.NORMAL, Reason.RESUMING, f"attempt {attempt} resumes from {resume or 'the start'}")
        )
        conditions = set_condition(
            conditions, ConditionType.PREEMPTED, False, Reason.RESUMED, f"attempt {attempt}", now, gen
        )
        conditions = set_condition(conditions, ConditionType.READY, False, Reason.PENDING, "workers starting", now, gen)
        return finish("Pending")

    if attempt == 0 or (not current and phase == "Pending"):
        attempt = max(attempt, 1)
        st["attempt"] = attempt
        plan.create = worker_pods(job, uid, attempt, scheduler_name)
        plan.events.append(
            (EventType.NORMAL, Reason.CREATED, f"created {len(plan.create)} worker(s), attempt {attempt}")
        )
        conditions = set_condition(conditions, ConditionType.READY, False, Reason.PENDING, "workers starting", now, gen)
        return finish("Pending")

    failed = next((p for p in current if p.phase == "Failed"), None)
    bad_field = failed_field(failed.message or "") if failed is not None else None
    if failed is not None and bad_field is not None:
        # Bad input fails the same way on every attempt: no retry, the reason names the field.
        message = f"{bad_field}: {failed.message}"
        plan.delete = [p.name for p in current]
        plan.events.append((EventType.WARNING, Reason.INVALID_TRAINER_INPUT, message))
        conditions = set_condition(
            conditions, ConditionType.READY, False, Reason.INVALID_TRAINER_INPUT, message, now, gen
        )
        st["completionTime"] = rfc3339(now)
        return finish("Failed")
    if failed is not None:
        st["failures"] = int(st.get("failures", 0)) + 1
        plan.delete = [p.name for p in current]
        if st["failures"] > s.backoff_limit:
            plan.events.append((EventType.WARNING, Reason.BACKOFF_LIMIT_EXCEEDED, f"{st['failures']} worker failures"))
            conditions = set_condition(
                conditions, ConditionType.READY, False, Reason.BACKOFF_LIMIT_EXCEEDED, "too many failures", now, gen
            )
            st["completionTime"] = rfc3339(now)
            return finish("Failed")
        attempt = next_attempt()
        plan.events.append(
            (EventType.WARNING, Reason.WORKER_FAILED, f"restarting as attempt {attempt} from {resume or 'the start'}")
        )
        return finish("Pending")

    rank0 = next((p for p in current if p.rank == 0), None)
    if (rank0 is not None and rank0.phase == "Succeeded") or report.done:
        st["step"] = s.hyperparameters.total_steps
        st["completionTime"] = rfc3339(now)
        st["workers"] = 0
        st["adapter"] = adapter_uri(s, name, ns)
        plan.events.append((EventType.NORMAL, Reason.SUCCEEDED, f"trained {s.hyperparameters.total_steps} steps"))
        conditions = set_condition(
            conditions, ConditionType.READY, True, Reason.SUCCEEDED, "training finished", now, gen
        )
        return finish("Succeeded")

    missing = {p["metadata"]["name"] for p in worker_pods(job, uid, attempt, scheduler_name)} - {
        p.name for p in current
    }
    if missing:
        plan.create = [p for p in worker_pods(job, uid, attempt, scheduler_name) if p["metadata"]["name"] in missing]
    running_pods = [p for p in current if p.phase == "Running"]
    st["workers"] = len(running_pods)
    if current and len(running_pods) == len(current) and not missing:
        st.setdefault("startTime", rfc3339(now))
        conditions = set_condition(
            conditions, ConditionType.READY, True, Reason.RUNNING, f"{len(running_pods)} worker(s) training", now, gen
        )
        return finish("Running")
    unsched = next((p.unschedulable for p in current if p.unschedulable), None)
    if unsched:
        conditions = set_condition(conditions, ConditionType.READY, False, Reason.UNSCHEDULABLE, unsched, now, gen)
    else:
        conditions = set_condition(conditions, ConditionType.READY, False, Reason.PENDING, "workers starting", now, gen)
    return finish("Pending")


def checkpoint_name(step: int) -> str:
    """A checkpoint's folder in the job's folder, as the contract names it (docs/finetuning.md)."""
    return f"checkpoint-{step:08d}"


def preemption_request(annotations: Mapping[str, str]) -> tuple[bool, float | None]:
    """Whether a checkpoint-then-yield request stands on the job, and its deadline (epoch seconds), if any."""
    raw = annotations.get(L.PREEMPT_DEADLINE)
    try:
        deadline = float(raw) if raw is not None else None
    except ValueError:
        deadline = None
    return L.PREEMPT in annotations, deadline
