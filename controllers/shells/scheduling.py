"""The packer's shell: a secondary scheduler for `schedulerName: ebbtide-packer` pods.

Each pass lists nodes and pods, builds a snapshot (controllers/planners/packing.py), asks the pure packer core
for a plan (in a worker thread: CP-SAT may take its whole budget) and applies it: binds whole gangs, asks preemptible
FineTuneJobs to checkpoint before their pods go or evicts (packer/checkpoint.py, the handshake the FineTuneJob
controller walks too), and lifts the preemption of jobs the resume what-if (packer/resume.py) finds room for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adapters import operator_metrics as M
from adapters.kube import ApiError, Kube
from controllers.planners.conditions import parse_rfc3339, rfc3339
from controllers.planners.finetune import preemption_request
from controllers.planners.packing import GPU_INDICES, JobInfo, build_snapshot, gang_key, job_gang
from crds import labels as L
from crds.finetunejob import FineTuneJob
from crds.reasons import ConditionType, EventType, Reason
from packer import Packer, PackerConfig
from packer.checkpoint import CheckpointAction, CheckpointState, checkpoint_step
from packer.plan import Plan, Verdict
from packer.resume import resumable
from packer.snapshot import ClusterSnapshot, Gang, GangKind, ServiceBudget

log = logging.getLogger("ebbtide.packer")
PREEMPT_PREFIX = "packer: "


@dataclass
class Scheduler:
    """One per operator process (binding is idempotent: a second binder gets a conflict and moves on)."""

    kube: Kube
    scheduler_name: str = "ebbtide-packer"
    checkpoint_deadline_s: float = 60.0
    interval_s: float = 1.0
    packer: Packer = field(default_factory=lambda: Packer(PackerConfig(), clock=time.monotonic))
    clock: Callable[[], float] = time.time
    _conditions: dict[str, str] = field(default_factory=dict)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.pass_once()
            except ApiError as e:
                log.warning("packer pass failed: %s %s", e.status, e.reason)
            except Exception:
                log.exception("packer pass failed")
            await asyncio.sleep(self.interval_s)

    async def pass_once(self) -> Plan | None:
        pods = await self.kube.list_all_pods()
        jobs = await self.kube.list_all_objects("finetunejobs")
        waiting_jobs = [
            j for j in jobs if self._packer_preempted(j) and (j.get("status") or {}).get("phase") == "Preempted"
        ]
        ours = [
            p for p in pods if p["spec"].get("schedulerName") == self.scheduler_name and not p["spec"].get("nodeName")
        ]
        if not ours and not waiting_jobs:
            M.PENDING_GANGS.clear()
            return None
        nodes = await self.kube.list_nodes()
        services = await self._service_budgets()
        job_info = {
            f"{j['metadata']['namespace']}/{j['metadata']['name']}": JobInfo(
                bool(j["spec"].get("preemptible", True)), _checkpoint_time(j)
            )
            for j in jobs
        }
        snapshot, pending = build_snapshot(nodes, pods, self.scheduler_name, services, job_info)
        now = self.clock()
        plan: Plan | None = None
        if snapshot.pending:
            t0 = time.perf_counter()
            plan = await asyncio.to_thread(self.packer.decide, snapshot, now)
            M.PACKER_DECISION_SECONDS.observe(time.perf_counter() - t0)
            for report in plan.solver:
                M.SOLVER_RUNS.labels(report.status.value).inc()
            await self._apply(plan, snapshot, pending, pods, jobs, now)
        self._pending_metric(snapshot, plan)
        await self._resume(waiting_jobs, snapshot, now)
        return plan

    async def _apply(
        self,
        plan: Plan,
        snapshot: ClusterSnapshot,
        pending: dict[str, list[dict[str, Any]]],
        pods: list[dict[str, Any]],
        jobs: list[dict[str, Any]],
        now: float,
    ) -> None:
        by_name = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in pods}
        for d in plan.decisions:
            members = pending.get(d.gang, [])
            ns = d.gang.split("/", 1)[0]
            if d.verdict == Verdict.BOUND:
                t0 = time.perf_counter()
                products = {n.name: n.gpu_product for n in snapshot.nodes}
                for b in d.bindings:
                    await self._bind(ns, b.pod, b.node, b.gpu_indices, products.get(b.node, ""))
                M.BIND_SECONDS.observe(time.perf_counter() - t0)
                log.info(
                    "bound gang %s (%s path): %s", d.gang, d.path, ", ".join(f"{b.pod}->{b.node}" for b in d.bindings)
                )
                continue
            reason = Reason.PREEMPTING if d.verdict == Verdict.NOMINATED else Reason.UNSCHEDULABLE
            message = d.reason if d.verdict != Verdict.NOMINATED else f"{d.reason}: {', '.join(d.victims)}"
            for m in members:
                await self._mark_unschedulable(m, reason, f"ebbtide-packer: {message}")
        running = {g.uid: g for g in snapshot.running}
        job_by_key = {f"{j['metadata']['namespace']}/{j['metadata']['name']}": j for j in jobs}
        for e in plan.evictions:
            victim = running.get(e.gang)
            if victim is None or victim.terminating:
                continue
            vns = e.gang.split("/", 1)[0]
            victim_pods = [p for key, p in by_name.items() if gang_key(p) == e.gang and p["spec"].get("nodeName")]
            job_name = (victim_pods[0]["metadata"].get("labels") or {}).get(L.FINETUNE) if victim_pods else None
            job = job_by_key.get(f"{vns}/{job_name}") if victim.kind == GangKind.FINETUNE else None
            requested, deadline = preemption_request((job["metadata"].get("annotations") or {}) if job else {})
            handshake = CheckpointState(e.checkpoint_first and job is not None, requested, deadline)
            decision = checkpoint_step(handshake, now, self.checkpoint_deadline_s)
            if decision.action == CheckpointAction.WAIT:
                continue
            if decision.action == CheckpointAction.REQUEST_CHECKPOINT and job is not None:
                note = f"{PREEMPT_PREFIX}{e.preemptor} (priority above {e.priority}) needs the GPUs; {e.reason}"
                await self.kube.patch_object_metadata(
                    "finetunejobs",
                    vns,
                    job["metadata"]["name"],
                    {L.PREEMPT: note[:250], L.PREEMPT_DEADLINE: f"{decision.deadline:.0f}"},
                )
                await self._event(
                    job, EventType.WARNING, Reason.PREEMPTION_REQUESTED, f"checkpoint, then yield to {e.preemptor}"
                )
            else:
                for p in victim_pods:
                    await self.kube.delete_pod(vns, p["metadata"]["name"])
                if victim_pods:
                    await self._event(
                        victim_pods[0],
                        EventType.WARNING,
                        Reason.PREEMPTED,
                        f"evicted for {e.preemptor} ({decision.reason}): {e.reason}",
                    )
            if requested:
                continue  # counted when the checkpoint was requested
            M.PREEMPTIONS.labels(vns, victim.kind.value).inc()
            M.PREEMPTIONS_BY_REASON.labels("checkpoint-first" if e.checkpoint_first else "evict").inc()
            preemptor_pods = [p for p in by_name.values() if gang_key(p) == e.preemptor]
            if preemptor_pods:
                await self._event(
                    preemptor_pods[0], EventType.NORMAL, Reason.PREEMPTING, f"evicting {e.gang}: {e.reason}"
                )

    async def _resume(self, waiting_jobs: list[dict[str, Any]], snapshot: ClusterSnapshot, now: float) -> None:
        """Lift the preemption of the jobs the resume what-if (packer/resume.py) finds room for again."""
        if not waiting_jobs:
            return
        classes = await self.kube.priority_class_values()
        waiting: list[Gang] = []
        by_uid: dict[str, dict[str, Any]] = {}
        for body in waiting_jobs:
            try:
                gang = job_gang(FineTuneJob.model_validate(body), classes, self.scheduler_name)
            except ValidationError:
                continue  # the FineTuneJob controller reports the invalid spec
            waiting.append(gang)
            by_uid[gang.uid] = body
        for uid in resumable(snapshot, waiting, now):
            job = by_uid[uid]
            ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
            await self.kube.patch_object_metadata("finetunejobs", ns, name, {L.PREEMPT: None, L.PREEMPT_DEADLINE: None})
            await self._event(job, EventType.NORMAL, Reason.CAPACITY_RETURNED, "GPUs are free again; resuming")

    # ---- API plumbing -----------------------------------------------------------------------------------

    @staticmethod
    def _packer_preempted(job: dict[str, Any]) -> bool:
        return str((job["metadata"].get("annotations") or {}).get(L.PREEMPT, "")).startswith(PREEMPT_PREFIX)

    async def _service_budgets(self) -> dict[str, ServiceBudget]:
        services = await self.kube.list_all_objects("llmservices")
        pdbs = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in await self.kube.list_all_pdbs()}
        out = {}
        for s in services:
            key = f"{s['metadata']['namespace']}/{s['metadata']['name']}"
            scaling = s["spec"].get("scaling") or {}
            pods_per_replica = max(1, int((s.get("status") or {}).get("podsPerReplica", 1)))
            allowed = int(((pdbs.get(key) or {}).get("status") or {}).get("disruptionsAllowed", 0))
            out[key] = ServiceBudget(
                key,
                int(scaling.get("minReplicas", 1)),
                int((s.get("status") or {}).get("readyReplicas", 0)),
                allowed // pods_per_replica,
            )
        return out

    async def _bind(self, namespace: str, pod: str, node: str, gpus: tuple[int, ...], product: str) -> None:
        annotations = {GPU_INDICES: ",".join(map(str, gpus)), L.GPU_PRODUCT: product}
        await self.kube.patch_pod(namespace, pod, {"metadata": {"annotations": annotations}})
        if not await self.kube.bind(namespace, pod, node):
            log.info("binding %s/%s skipped: the pod is gone or already bound", namespace, pod)

    async def _mark_unschedulable(self, pod: dict[str, Any], reason: str, message: str) -> None:
        key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        if self._conditions.get(key) == message:
            return
        self._conditions[key] = message
        condition = {
            "type": ConditionType.POD_SCHEDULED,
            "status": "False",
            "reason": Reason.UNSCHEDULABLE,
            "message": message[:1000],
            "lastTransitionTime": rfc3339(self.clock()),
        }
        await self.kube.patch_pod_status(
            pod["metadata"]["namespace"], pod["metadata"]["name"], {"conditions": [condition]}
        )
        await self._event(
            pod, EventType.WARNING, Reason.FAILED_SCHEDULING if reason == Reason.UNSCHEDULABLE else reason, message
        )

    async def _event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        await self.kube.create_event(obj, type_, reason, message, self.scheduler_name)

    def _pending_metric(self, snapshot: ClusterSnapshot, plan: Plan | None) -> None:
        M.PENDING_GANGS.clear()
        placed = {d.gang for d in plan.decisions if d.verdict == Verdict.BOUND} if plan else set()
        counts: dict[tuple[str, str], int] = {}
        for g in snapshot.pending:
            if g.uid in placed:
                continue
            key = (g.uid.split("/", 1)[0], str(g.priority))
            counts[key] = counts.get(key, 0) + 1
        for (ns, prio), n in counts.items():
            M.PENDING_GANGS.labels(ns, prio).set(n)


def _checkpoint_time(job: dict[str, Any]) -> float | None:
    return parse_rfc3339((((job.get("status") or {}).get("lastCheckpoint")) or {}).get("time"))
