"""Builders for controller test cases (Kueue-style): readable objects with only what a case cares about."""

from __future__ import annotations

from typing import Any

from controllers.planners.gangs import template_hash
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


def worker(attempt: int, rank: int = 0, phase: str = "Running") -> PodView:
    return PodView(
        name=f"ft-a{attempt}-w{rank}",
        labels={L.FINETUNE: "ft", L.ATTEMPT: str(attempt), L.RANK: str(rank)},
        annotations={},
        phase=phase,
        ready=phase == "Running",
        deleting=False,
        node="n",
        unschedulable=None,
    )
