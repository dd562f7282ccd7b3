"""From Kubernetes objects to the packer's snapshot, and back to pod-level actions (pure, no I/O).

Pods are grouped into gangs by the `ebbtide.dev/gang` label; GPUs are whole (`nvidia.com/gpu`) or a share
(`ebbtide.dev/gpu-milli` annotation on a one-GPU pod). GPU indices held on a node come from the
`ebbtide.dev/gpu-indices` annotation the packer writes at bind time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from catalogue.gpus import GPU_PRODUCT_LABEL, GPU_RESOURCE
from controllers.planners.conditions import parse_rfc3339
from controllers.planners.finetune import worker_pods
from crds import labels as L
from crds.finetunejob import FineTuneJob
from crds.reasons import ConditionType
from packer.snapshot import (
    GPU_MILLI,
    ClusterSnapshot,
    Gang,
    GangKind,
    LabelRequirement,
    Node,
    Placement,
    PodRequest,
    RunningGang,
    ServiceBudget,
    Taint,
    TaintEffect,
    Toleration,
)

GPU_INDICES = "ebbtide.dev/gpu-indices"
GPU_MILLI_ANNOTATION = "ebbtide.dev/gpu-milli"
TOPOLOGY_KEY = "ebbtide.dev/topology-key"  # annotation: keep a multi-pod gang within one value of this label


def _ts(raw: str | None) -> float:
    return parse_rfc3339(raw) or 0.0


def cpu_milli(q: str | None) -> int:
    """A Kubernetes CPU quantity in millicores."""
    if not q:
        return 0
    return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)


def mem_mib(q: str | None) -> int:
    """A Kubernetes memory quantity in MiB (binary and decimal suffixes)."""
    if not q:
        return 0
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * factor)
    return int(float(q) / 2**20)


def pod_request(pod: Mapping[str, Any]) -> PodRequest:
    """What one pod asks for."""
    cpu = mem = gpus = 0
    for c in pod["spec"].get("containers", []):
        res = c.get("resources") or {}
        req = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        cpu += cpu_milli(req.get("cpu"))
        mem += mem_mib(req.get("memory"))
        gpus += int(req.get(GPU_RESOURCE, 0))
    milli = int((pod["metadata"].get("annotations") or {}).get(GPU_MILLI_ANNOTATION, GPU_MILLI))
    if gpus != 1:
        milli = GPU_MILLI
    return PodRequest(pod["metadata"]["name"], cpu, mem, gpus, milli)


def _affinity(pod: Mapping[str, Any]) -> tuple[frozenset[str], tuple[LabelRequirement, ...]]:
    """Allowed GPU products and the other required node labels of a pod."""
    spec = pod["spec"]
    reqs = [LabelRequirement(k, frozenset([v])) for k, v in (spec.get("nodeSelector") or {}).items()]
    products: frozenset[str] = frozenset()
    terms = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    for term in terms[:1]:  # Ebbtide writes one term; further OR-ed terms are not modelled
        for e in term.get("matchExpressions", []):
            if e.get("operator") != "In":
                continue
            if e["key"] == GPU_PRODUCT_LABEL:
                products = frozenset(e.get("values", []))
            else:
                reqs.append(LabelRequirement(e["key"], frozenset(e.get("values", []))))
    return products, tuple(reqs)


def _tolerations(pod: Mapping[str, Any]) -> tuple[Toleration, ...]:
    out = []
    for t in pod["spec"].get("tolerations") or []:
        effect = t.get("effect")
        out.append(
            Toleration(
                t.get("key", ""),
                t.get("operator", "Equal"),
                "" if t.get("operator") == "Exists" else t.get("value", ""),
                TaintEffect(effect) if effect else None,
            )
        )
    return tuple(out)


def gang_kind(pod: Mapping[str, Any]) -> GangKind:
    labels = pod["metadata"].get("labels") or {}
    if L.SERVICE in labels:
        return GangKind.SERVING
    if L.FINETUNE in labels:
        return GangKind.FINETUNE
    return GangKind.OTHER


def gang_key(pod: Mapping[str, Any]) -> str:
    """namespace/gang of a pod; a pod without the label is a gang of one."""
    meta = pod["metadata"]
    return f"{meta['namespace']}/{(meta.get('labels') or {}).get(L.GANG, meta['name'])}"


def service_key(pod: Mapping[str, Any]) -> str:
    meta = pod["metadata"]
    return f"{meta['namespace']}/{(meta.get('labels') or {}).get(L.SERVICE, '')}"


def job_key(pod: Mapping[str, Any]) -> str:
    meta = pod["metadata"]
    return f"{meta['namespace']}/{(meta.get('labels') or {}).get(L.FINETUNE, '')}"


@dataclass(frozen=True)
class JobInfo:
    """What the packer needs of a FineTuneJob."""

    preemptible: bool
    last_checkpoint_s: float | None


def build_snapshot(
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    scheduler_name: str,
    services: Mapping[str, ServiceBudget],
    jobs: Mapping[str, JobInfo],
) -> tuple[ClusterSnapshot, dict[str, list[dict[str, Any]]]]:
    """The packer's snapshot, and the pending pods of each pending gang (by gang key)."""
    node_objs: dict[str, Node] = {}
    for n in nodes:
        meta, status = n["metadata"], n.get("status") or {}
        alloc = status.get("allocatable") or {}
        ready = any(
            c.get("type") == ConditionType.READY and c.get("status") == "True" for c in status.get("conditions", [])
        )
        if not ready or (n.get("spec") or {}).get("unschedulable"):
            continue
        gpus = int(alloc.get(GPU_RESOURCE, 0))
        taints = tuple(
            Taint(t["key"], t.get("value", ""), TaintEffect(t["effect"]))
            for t in (n.get("spec") or {}).get("taints") or []
        )
        cpu, mem = cpu_milli(alloc.get("cpu")), mem_mib(alloc.get("memory"))
        labels = dict(meta.get("labels") or {})
        node_objs[meta["name"]] = Node(
            meta["name"], [GPU_MILLI] * gpus, cpu, mem, cpu, mem, labels.get(GPU_PRODUCT_LABEL, ""), labels, taints
        )

    bound: dict[str, list[dict[str, Any]]] = defaultdict(list)
    pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in pods:
        phase = (p.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            continue
        node = p["spec"].get("nodeName")
        if node:
            bound[gang_key(p)].append(p)
        elif p["spec"].get("schedulerName") == scheduler_name and not p["metadata"].get("deletionTimestamp"):
            pending[gang_key(p)].append(p)

    running: list[RunningGang] = []
    for key, members in sorted(bound.items()):
        members = [m for m in members if m["spec"]["nodeName"] in node_objs]
        if not members:
            continue
        reqs, placements = [], []
        for m in sorted(members, key=lambda m: m["metadata"]["name"]):
            node = node_objs[m["spec"]["nodeName"]]
            req = pod_request(m)
            indices = _take(node, m, req)
            reqs.append(req)
            placements.append(Placement(req.name, node.name, indices))
        first = members[0]
        kind = gang_kind(first)
        job = jobs.get(job_key(first)) if kind == GangKind.FINETUNE else None
        products, affinity = _affinity(first)
        running.append(
            RunningGang(
                key,
                tuple(reqs),
                tuple(placements),
                priority=int(first["spec"].get("priority") or 0),
                kind=kind,
                preemptible=bool(job and job.preemptible),
                started_s=min(_ts(m["metadata"].get("creationTimestamp")) for m in members),
                last_checkpoint_s=job.last_checkpoint_s if job else None,
                service=service_key(first) if kind == GangKind.SERVING else "",
                terminating=any(m["metadata"].get("deletionTimestamp") for m in members),
                gpu_products=products,
                affinity=affinity,
                tolerations=_tolerations(first),
            )
        )

    gangs: list[Gang] = []
    ready_pending: dict[str, list[dict[str, Any]]] = {}
    for key, members in sorted(pending.items()):
        first = members[0]
        size = int((first["metadata"].get("annotations") or {}).get(L.GANG_SIZE, len(members)))
        if len(members) < size or key in bound:
            continue  # wait until the controller has created every member (all or nothing)
        gangs.append(pending_gang(key, members, int(first["spec"].get("priority") or 0)))
        ready_pending[key] = members
    return ClusterSnapshot(list(node_objs.values()), running, gangs, dict(services)), ready_pending


def pending_gang(key: str, members: list[dict[str, Any]], priority: int) -> Gang:
    """A gang of pods not yet bound, as the packer places it (`priority`: the PriorityClass value)."""
    first = members[0]
    products, affinity = _affinity(first)
    kind = gang_kind(first)
    return Gang(
        key,
        tuple(pod_request(m) for m in sorted(members, key=lambda m: m["metadata"]["name"])),
        priority=priority,
        kind=kind,
        gpu_products=products,
        affinity=affinity,
        tolerations=_tolerations(first),
        topology_key=(first["metadata"].get("annotations") or {}).get(TOPOLOGY_KEY, ""),
        created_s=min(_ts(m["metadata"].get("creationTimestamp")) for m in members),
        service=service_key(first) if kind == GangKind.SERVING else "",
    )


def job_gang(job: FineTuneJob, priority_values: Mapping[str, int], scheduler_name: str) -> Gang:
    """The worker gang a preempted FineTuneJob's next attempt creates, for the resume what-if: built from the very
    manifests the FineTuneJob planner creates (`worker_pods`), so the trial and the real gang cannot differ."""
    attempt = job.status.attempt + 1
    manifests = worker_pods(job, job.metadata.uid or "", attempt, scheduler_name)
    priority = priority_values.get(job.spec.priority_class_name or "", 0)
    return pending_gang(gang_key(manifests[0]), manifests, priority)


def _take(node: Node, pod: Mapping[str, Any], req: PodRequest) -> tuple[int, ...]:
    """Charge a bound pod to its node: the GPU indices it holds (annotated, else the first free ones)."""
    node.cpu_free_milli = max(0, node.cpu_free_milli - req.cpu_milli)
    node.mem_free_mib = max(0, node.mem_free_mib - req.mem_mib)
    raw = (pod["metadata"].get("annotations") or {}).get(GPU_INDICES, "")
    wanted = [int(i) for i in raw.split(",") if i.strip().isdigit() and int(i) < node.gpu_count]
    chosen: list[int] = []
    for i in wanted + list(range(node.gpu_count)):
        if len(chosen) == req.gpu_count:
            break
        if i not in chosen and node.gpu_free_milli[i] >= req.gpu_milli:
            chosen.append(i)
    for i in chosen:
        node.gpu_free_milli[i] -= req.gpu_milli
    if len(chosen) < req.gpu_count:
        # Over-committed by someone else's binding: record what exists so the snapshot stays valid.
        chosen += [i for i in range(node.gpu_count) if i not in chosen][: req.gpu_count - len(chosen)]
    return tuple(chosen[: req.gpu_count])
