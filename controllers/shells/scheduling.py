"""The packer's shell: a secondary scheduler for `schedulerName: ebbtide-packer` pods.

A pass runs when the watch-fed cache reports something that can change a placement (a pod waiting for this
scheduler, capacity freed or added, a budget or a job's preemption state changed) and on a slow safety resync,
never on a list loop. It builds a snapshot from the cache (controllers/planners/packing.py), asks the pure packer
core for a plan (in a worker thread: CP-SAT may take its whole budget) and applies it: binds whole gangs, asks
preemptible FineTuneJobs to checkpoint before their pods go or evicts (packer/checkpoint.py, the handshake the
FineTuneJob controller walks too), and lifts the preemption of jobs the resume what-if (packer/resume.py) finds
room for. Only the peering leader acts: a standby replica keeps its cache warm and binds nothing.

The cache learns of this scheduler's own writes a moment after they succeed. Until it does, bindings are assumed
(overlaid on the cached pods, as kube-scheduler assumes its own) and evictions, checkpoint requests and resumes are
not repeated, so a pass that starts in between neither binds a pod twice nor double-books its GPUs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adapters import operator_metrics as M
from adapters.cache import Change, ClusterCache, Obj, key_of
from adapters.kube import ApiError, Kube
from controllers.planners.conditions import parse_rfc3339, rfc3339
from controllers.planners.finetune import preemption_request
from controllers.planners.packing import GPU_INDICES, JobInfo, build_snapshot, gang_key, job_gang
from crds import labels as L
from crds.finetunejob import FineTuneJob
from crds.reasons import ConditionType, EventType, Reason
from packer import Packer, PackerConfig
from packer.checkpoint import CheckpointAction, CheckpointState, checkpoint_step
from packer.plan import Binding, Plan, Verdict
from packer.resume import resumable
from packer.snapshot import ClusterSnapshot, Gang, GangKind, ServiceBudget

log = logging.getLogger("ebbtide.packer")
PREEMPT_PREFIX = "packer: "
BIND_CONCURRENCY = 16  # gangs of one plan bound at once
ASSUME_S = 60.0  # how long an own write may stay unseen by the cache before it is no longer assumed


@dataclass(frozen=True)
class Assumed:
    """A binding this scheduler made that the cache has not shown yet."""

    uid: str
    node: str
    gpu_indices: str
    product: str
    since: float


@dataclass
class Scheduler:
    """One per operator process; `run_forever` waits for `notify()` (wired to the cache by `listen`)."""

    kube: Kube
    cache: ClusterCache
    leader: Callable[[], bool] = lambda: True
    scheduler_name: str = "ebbtide-packer"
    checkpoint_deadline_s: float = 60.0
    resync_s: float = 30.0
    debounce_s: float = 0.1
    min_interval_s: float = 1.0  # however busy the cluster, at most one pass this often
    packer: Packer = field(default_factory=lambda: Packer(PackerConfig(), clock=time.monotonic))
    clock: Callable[[], float] = time.time
    passes: int = 0  # passes run, idle ones included: events and resyncs, not a clock, decide how many
    _conditions: dict[str, str] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _assumed: dict[str, Assumed] = field(default_factory=dict)
    _recent: dict[str, float] = field(default_factory=dict)  # evictions, checkpoint requests, resumes

    def notify(self) -> None:
        """Something that may change a placement happened: run a pass soon."""
        self._wake.set()

    def listen(self) -> None:
        """Wake on the cache events that can change a placement."""
        self.cache.pods.listen(self._on_pod)
        self.cache.nodes.listen(self._on_node)
        for informer in (self.cache.pdbs, self.cache.llmservices, self.cache.finetunejobs, self.cache.peerings):
            informer.listen(lambda *_: self.notify())

    def _on_pod(self, type_: Change, old: Obj | None, new: Obj | None) -> None:
        # A pod waiting for this scheduler changed, or capacity was taken or freed (bound, finished, deleted);
        # a running pod's readiness or status churn changes no placement.
        if self._pod_shape(old) != self._pod_shape(new):
            self.notify()

    def _pod_shape(self, pod: Obj | None) -> tuple[Any, ...] | None:
        if pod is None:
            return None
        spec, meta = pod["spec"], pod["metadata"]
        if not spec.get("nodeName"):
            if spec.get("schedulerName") != self.scheduler_name:
                return None  # another scheduler's pod holds nothing until it is bound
            return ("waiting", meta.get("resourceVersion"))
        terminal = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        return ("bound", spec["nodeName"], terminal, bool(meta.get("deletionTimestamp")))

    def _on_node(self, type_: Change, old: Obj | None, new: Obj | None) -> None:
        # Heartbeats change a node's status all the time; only what the snapshot reads matters.
        if old is None or new is None or _node_shape(old) != _node_shape(new):
            self.notify()

    async def run_forever(self) -> None:
        last = -math.inf
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.resync_s)
            except TimeoutError:
                pass  # the safety resync: a pass even when no event arrived
            # One pass for a burst of events, and a gang that stays unplaceable costs a pass per interval at most.
            await asyncio.sleep(max(self.debounce_s, last + self.min_interval_s - time.monotonic()))
            self._wake.clear()
            if not self.leader():
                continue
            last = time.monotonic()
            try:
                await self.pass_once()
            except ApiError as e:
                log.warning("packer pass failed: %s %s", e.status, e.reason)
            except Exception:
                log.exception("packer pass failed")

    async def pass_once(self) -> Plan | None:
        self.passes += 1
        now = self.clock()
        self._forget(now)
        jobs = self.cache.finetunejobs.items()
        waiting_jobs = [
            j
            for j in jobs
            if self._packer_preempted(j)
            and (j.get("status") or {}).get("phase") == "Preempted"
            and f"resume:{key_of(j)}" not in self._recent
        ]
        ours = [p for p in self.cache.pods.by_index("unscheduled", self.scheduler_name) if not self._is_assumed(p)]
        if not ours and not waiting_jobs:
            M.PENDING_GANGS.clear()
            return None
        pods = self._with_assumed(self.cache.pods.items())
        nodes = self.cache.nodes.items()
        services = self._service_budgets()
        job_info = {
            f"{j['metadata']['namespace']}/{j['metadata']['name']}": JobInfo(
                bool(j["spec"].get("preemptible", True)), _checkpoint_time(j)
            )
            for j in jobs
        }
        snapshot, pending = build_snapshot(nodes, pods, self.scheduler_name, services, job_info)
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
        # The plan's bindings book disjoint GPUs, so its gangs bind concurrently: one after another, a burst of
        # gangs waits on two API round trips per pod in turn (the scale benchmark's apply-to-bound).
        binds: list[asyncio.Future[None]] = []
        try:
            await self._apply_decisions(plan, snapshot, pending, pods, jobs, now, binds)
        finally:
            done = await asyncio.gather(*binds, return_exceptions=True)
        failed = [r for r in done if isinstance(r, BaseException)]
        if failed:
            raise failed[0]

    async def _bind_gang(self, slots: asyncio.Semaphore, gang: str, bindings: tuple[Binding, ...], path: str,
                         uids: dict[str, str], products: dict[str, str]) -> None:  # fmt: skip
        """Bind every pod of one gang (its pods concurrently), unless this replica has stopped leading."""
        async with slots:
            if not self.leader():
                return
            t0 = time.perf_counter()
            ns = gang.split("/", 1)[0]
            await asyncio.gather(
                *(self._bind(ns, b.pod, uids.get(b.pod, ""), b.node, b.gpu_indices, products.get(b.node, ""))
                  for b in bindings)
            )  # fmt: skip
            M.BIND_SECONDS.observe(time.perf_counter() - t0)
            log.info("bound gang %s (%s path): %s", gang, path, ", ".join(f"{b.pod}->{b.node}" for b in bindings))

    async def _apply_decisions(
        self,
        plan: Plan,
        snapshot: ClusterSnapshot,
        pending: dict[str, list[dict[str, Any]]],
        pods: list[dict[str, Any]],
        jobs: list[dict[str, Any]],
        now: float,
        binds: list[asyncio.Future[None]],
    ) -> None:
        """The plan in order: bound gangs start binding and the rest start being marked (both into `binds`, so no
        binding waits behind the writes of a gang that stays pending); then evictions."""
        by_name = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in pods}
        products = {n.name: n.gpu_product for n in snapshot.nodes}
        slots = asyncio.Semaphore(BIND_CONCURRENCY)
        for d in plan.decisions:
            if not self.leader():
                log.info("no longer the peering leader: leaving the rest of the plan to the new one")
                return
            members = pending.get(d.gang, [])
            if d.verdict == Verdict.BOUND:
                uids = {m["metadata"]["name"]: m["metadata"].get("uid", "") for m in members}
                bind = self._bind_gang(slots, d.gang, d.bindings, d.path, uids, products)
                binds.append(asyncio.ensure_future(bind))
                continue
            reason = Reason.PREEMPTING if d.verdict == Verdict.NOMINATED else Reason.UNSCHEDULABLE
            message = d.reason if d.verdict != Verdict.NOMINATED else f"{d.reason}: {', '.join(d.victims)}"
            for m in members:
                binds.append(asyncio.ensure_future(self._mark_unschedulable(m, reason, f"ebbtide-packer: {message}")))
        running = {g.uid: g for g in snapshot.running}
        job_by_key = {f"{j['metadata']['namespace']}/{j['metadata']['name']}": j for j in jobs}
        for e in plan.evictions:
            victim = running.get(e.gang)
            if victim is None or victim.terminating or f"evict:{e.gang}" in self._recent:
                continue
            if not self.leader():
                return
            vns = e.gang.split("/", 1)[0]
            victim_pods = [p for key, p in by_name.items() if gang_key(p) == e.gang and p["spec"].get("nodeName")]
            job_name = (victim_pods[0]["metadata"].get("labels") or {}).get(L.FINETUNE) if victim_pods else None
            job = job_by_key.get(f"{vns}/{job_name}") if victim.kind == GangKind.FINETUNE else None
            requested, deadline = preemption_request((job["metadata"].get("annotations") or {}) if job else {})
            handshake = CheckpointState(e.checkpoint_first and job is not None, requested, deadline)
            decision = checkpoint_step(handshake, now, self.checkpoint_deadline_s)
            if decision.action in (CheckpointAction.WAIT, CheckpointAction.SIGNAL):
                continue  # the job's controller signals its workers and reads the checkpoint back
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
                self._recent[f"evict:{e.gang}"] = now
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
                self._recent[f"evict:{e.gang}"] = now
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
        classes = self.cache.priority_class_values()
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
            if not self.leader():
                return
            job = by_uid[uid]
            ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
            self._recent[f"resume:{key_of(job)}"] = now
            await self.kube.patch_object_metadata("finetunejobs", ns, name, {L.PREEMPT: None, L.PREEMPT_DEADLINE: None})
            await self._event(job, EventType.NORMAL, Reason.CAPACITY_RETURNED, "GPUs are free again; resuming")

    # ---- API plumbing -----------------------------------------------------------------------------------

    @staticmethod
    def _packer_preempted(job: dict[str, Any]) -> bool:
        return str((job["metadata"].get("annotations") or {}).get(L.PREEMPT, "")).startswith(PREEMPT_PREFIX)

    def _service_budgets(self) -> dict[str, ServiceBudget]:
        out = {}
        for s in self.cache.llmservices.items():
            key = f"{s['metadata']['namespace']}/{s['metadata']['name']}"
            scaling = s["spec"].get("scaling") or {}
            pods_per_replica = max(1, int((s.get("status") or {}).get("podsPerReplica", 1)))
            allowed = int(((self.cache.pdbs.get(key) or {}).get("status") or {}).get("disruptionsAllowed", 0))
            out[key] = ServiceBudget(
                key,
                int(scaling.get("minReplicas", 1)),
                int((s.get("status") or {}).get("readyReplicas", 0)),
                allowed // pods_per_replica,
            )
        return out

    async def _bind(self, namespace: str, pod: str, uid: str, node: str, gpus: tuple[int, ...], product: str) -> None:
        indices = ",".join(map(str, gpus))
        # One write: the binding carries the GPU indices and product onto the pod, so no bound pod lacks them.
        annotations = {GPU_INDICES: indices, L.GPU_PRODUCT: product}
        if await self.kube.bind(namespace, pod, node, annotations):
            self._assumed[f"{namespace}/{pod}"] = Assumed(uid, node, indices, product, self.clock())
        else:
            log.info("binding %s/%s skipped: the pod is gone or already bound", namespace, pod)

    # ---- own writes the cache has not shown yet ------------------------------------------------------------

    def _is_assumed(self, pod: Obj) -> bool:
        assumed = self._assumed.get(key_of(pod))
        return assumed is not None and assumed.uid == pod["metadata"].get("uid", "")

    def _with_assumed(self, pods: list[Obj]) -> list[Obj]:
        """The cached pods, with this scheduler's bindings the cache has not shown yet applied."""
        if not self._assumed:
            return pods
        out = []
        for p in pods:
            assumed = self._assumed.get(key_of(p))
            if assumed is not None and assumed.uid == p["metadata"].get("uid", "") and not p["spec"].get("nodeName"):
                annotations = {
                    **(p["metadata"].get("annotations") or {}),
                    GPU_INDICES: assumed.gpu_indices,
                    L.GPU_PRODUCT: assumed.product,
                }
                p = {
                    **p,
                    "metadata": {**p["metadata"], "annotations": annotations},
                    "spec": {**p["spec"], "nodeName": assumed.node},
                }
            out.append(p)
        return out

    def _forget(self, now: float) -> None:
        """Drop assumptions the cache has caught up with (pod bound, gone or replaced) or that have expired."""
        for key, assumed in list(self._assumed.items()):
            pod = self.cache.pods.get(key)
            if (
                pod is None
                or pod["metadata"].get("uid", "") != assumed.uid
                or pod["spec"].get("nodeName")
                or now - assumed.since > ASSUME_S
            ):
                del self._assumed[key]
        for key, since in list(self._recent.items()):
            if now - since > ASSUME_S:
                del self._recent[key]

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


def _node_shape(node: Obj) -> tuple[Any, ...]:
    """What build_snapshot reads of a node: allocatable, labels, taints, schedulability and readiness."""
    status, spec = node.get("status") or {}, node.get("spec") or {}
    ready = [c.get("status") for c in status.get("conditions", []) if c.get("type") == ConditionType.READY]
    return (
        status.get("allocatable"),
        node["metadata"].get("labels"),
        spec.get("taints"),
        spec.get("unschedulable"),
        ready,
    )


def _checkpoint_time(job: dict[str, Any]) -> float | None:
    return parse_rfc3339((((job.get("status") or {}).get("lastCheckpoint")) or {}).get("time"))
