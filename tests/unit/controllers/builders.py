"""Builders for controller test cases (Kueue-style): readable objects with only what a case cares about."""

from __future__ import annotations

from typing import Any

from controllers.planners.gangs import template_hash
from controllers.planners.packing import GPU_INDICES
from controllers.planners.snapshot import PodView
from crds import labels as L
from crds.finetunejob import FineTuneJob
from crds.llmservice import LLMService


def service(replicas: int = 2, **spec: Any) -> LLMService:
    body: dict[str, Any] = {
        "metadata": {"name": "svc", "namespace": "ns", "generation": 1},
        "spec": {
            "model": {"name": "m", "source": "hf://org/m", "parametersB": 8},
            "engine": {"type": "simulated"},
            "replicas": replicas,
            **spec,
        },
    }
    return LLMService.model_validate(body)


def pod(
    replica: int,
    role: str = "server",
    ready: bool = True,
    phase: str = "Running",
    template: LLMService | None = None,
    **ann: str,
) -> PodView:
    """A pod of replica `replica`, built from `template`'s spec (default: `service()`'s); a role with a rank
    (`worker-0`) is labelled with the role alone, as gangs are."""
    name = f"svc-r{replica}" if role == "server" else f"svc-r{replica}-{role}"
    spec = (template or service()).spec
    labels = {
        L.SERVICE: "svc",
        L.REPLICA: str(replica),
        L.ROLE: role.split("-")[0],
        L.TEMPLATE_HASH: template_hash(spec),
    }
    return PodView(
        name=name,
        labels=labels,
        annotations=dict(ann),
        phase=phase,
        ready=ready,
        deleting=False,
        node="n",
        unschedulable=None,
    )


def job(**spec: Any) -> FineTuneJob:
    status = spec.pop("status", {})
    annotations = spec.pop("annotations", {})
    return FineTuneJob.model_validate(
        {
            "metadata": {"name": "ft", "namespace": "ns", "generation": 1, "annotations": annotations},
            "spec": {
                "baseModel": {"name": "m", "source": "hf://org/m", "parametersB": 8},
                "dataset": {"uri": "s3://d/x"},
                "trainer": {"type": "simulated"},
                **spec,
            },
            "status": status,
        }
    )


def worker(
    attempt: int, rank: int = 0, phase: str = "Running", deleting: bool = False, message: str | None = None
) -> PodView:
    return PodView(
        name=f"ft-a{attempt}-w{rank}",
        labels={L.FINETUNE: "ft", L.ATTEMPT: str(attempt), L.RANK: str(rank)},
        annotations={},
        phase=phase,
        ready=phase == "Running",
        deleting=deleting,
        node="n",
        unschedulable=None,
        message=message,
    )


SCHED = "ebbtide-packer"


def gpu_node(name: str, gpus: int = 8, product: str = "NVIDIA-L4") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "96", "memory": "1Ti", "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def gang_pod(
    name: str, gang: str, gpus: int, node_name: str | None = None, size: int = 1, **labels: str
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "labels": {L.GANG: gang, **labels},
        "annotations": {L.GANG_SIZE: str(size)},
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    if node_name:
        meta["annotations"][GPU_INDICES] = ",".join(str(i) for i in range(gpus))
    spec: dict[str, Any] = {
        "schedulerName": SCHED,
        "priority": 100,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{"resources": {"requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": str(gpus)}}}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-L4"]}
                            ]
                        }
                    ]
                }
            }
        },
    }
    if node_name:
        spec["nodeName"] = node_name
    return {"metadata": meta, "spec": spec, "status": {"phase": "Running" if node_name else "Pending"}}


class Unlisted:
    """The cache's list functions: the tests feed the cache themselves, so none may be called."""

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{name} called: the cache is fed by the test")

        return call


class RecordingKube:
    """The Kube facade's writes, recorded; there are no reads to fake."""

    def __init__(self) -> None:
        self.core = self.policy = self.scheduling = self.custom = Unlisted()
        self.calls: list[tuple[str, Any]] = []
        self.statuses: list[tuple[str, str, dict[str, Any], str]] = []
        self.bind_annotations: dict[str, dict[str, str]] = {}

    async def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.calls.append(("patch_pod", name))

    async def create_pod(self, manifest: dict[str, Any]) -> bool:
        self.calls.append(("create_pod", manifest["metadata"]["name"]))
        return True

    async def ensure(self, manifest: dict[str, Any], current: dict[str, Any] | None = None) -> None:
        self.calls.append(("ensure", manifest["kind"]))

    async def bind(self, namespace: str, pod: str, node: str, annotations: dict[str, str] | None = None) -> bool:
        self.calls.append(("bind", (pod, node)))
        self.bind_annotations[pod] = dict(annotations or {})
        return True

    async def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.calls.append(("unschedulable", name))

    async def create_event(self, obj: dict[str, Any], type_: str, reason: str, message: str, component: str) -> None:
        self.calls.append(("event", reason))

    async def apply_status(
        self, plural: str, namespace: str | None, name: str, status: dict[str, Any], manager: str
    ) -> None:
        self.calls.append(("status", name))
        self.statuses.append((plural, name, status, manager))

    async def annotate_node(self, name: str, annotations: dict[str, str | None]) -> None:
        self.calls.append(("annotate_node", (name, annotations)))

    async def scale(self, plural: str, namespace: str, name: str, replicas: int) -> None:
        self.calls.append(("scale", replicas))

    async def patch_object_spec(self, plural: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self.calls.append(("patch_spec", spec))

    async def patch_object_metadata(
        self, plural: str, namespace: str, name: str, annotations: dict[str, str | None]
    ) -> None:
        self.calls.append(("annotate", annotations))

    def bound(self) -> list[tuple[str, str]]:
        return [args for name, args in self.calls if name == "bind"]
