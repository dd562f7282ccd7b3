"""Generate crds/manifests/*.yaml from the pydantic API types: `python -m crds.generate [--check]`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from crds.base import GROUP, VERSION
from crds.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from crds.llmservice import LLMServiceSpec, LLMServiceStatus
from crds.powerbudget import PowerBudgetSpec, PowerBudgetStatus
from crds.schema import structural_schema

MANIFESTS = Path(__file__).parent / "manifests"


@dataclass(frozen=True)
class CRDInfo:
    """What a CRD manifest needs beyond the schema."""

    kind: str
    plural: str
    short_names: list[str]
    scope: str
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: list[dict[str, Any]]
    scale: bool = False
    categories: list[str] = field(default_factory=lambda: ["ebbtide", "all"])


CRDS = [
    CRDInfo(
        kind="LLMService",
        plural="llmservices",
        short_names=["llms"],
        scope="Namespaced",
        description="A model served by N replicas; each replica is a gang of GPU pods.",
        spec=LLMServiceSpec,
        status=LLMServiceStatus,
        scale=True,
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
            {"name": "Ready", "type": "string", "jsonPath": ".status.ready", "description": "ready/desired"},
            {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus", "description": "GPUs requested"},
            {"name": "GPU/Replica", "type": "integer", "jsonPath": ".spec.gpu.count", "priority": 1},
            {"name": "Engine", "type": "string", "jsonPath": ".spec.engine.type", "priority": 1},
            {"name": "Policy", "type": "string", "jsonPath": ".spec.scaling.policy", "priority": 1},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    ),
    CRDInfo(
        kind="FineTuneJob",
        plural="finetunejobs",
        short_names=["ftj"],
        scope="Namespaced",
        description="A parameter-efficient (LoRA) fine-tuning run on a gang of GPU workers.",
        spec=FineTuneJobSpec,
        status=FineTuneJobStatus,
        columns=[
            {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel.name"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
            {"name": "Workers", "type": "integer", "jsonPath": ".status.workers"},
            {"name": "Checkpoint", "type": "integer", "jsonPath": ".status.lastCheckpoint.step"},
            {"name": "Preemptions", "type": "integer", "jsonPath": ".status.preemptions", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    ),
    CRDInfo(
        kind="PowerBudget",
        plural="powerbudgets",
        short_names=["pb"],
        scope="Cluster",
        description="A power domain (nodes matched by a selector) with a budget in watts.",
        spec=PowerBudgetSpec,
        status=PowerBudgetStatus,
        columns=[
            {"name": "Budget", "type": "number", "jsonPath": ".spec.budgetWatts"},
            {"name": "Drawn", "type": "number", "jsonPath": ".status.drawnWatts"},
            {"name": "Headroom", "type": "number", "jsonPath": ".status.headroomWatts"},
            {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes"},
            {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    ),
]


def crd_manifest(info: CRDInfo) -> dict[str, Any]:
    """The CustomResourceDefinition object for one kind."""
    spec_schema = structural_schema(info.spec)
    status_schema = structural_schema(info.status)
    # Status is written only by the operator; unknown fields there must survive operator upgrades.
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    subresources: dict[str, Any] = {"status": {}}
    if info.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "ebbtide"}},
        "spec": {
            "group": GROUP,
            "scope": info.scope,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.kind.lower(),
                "shortNames": info.short_names,
                "categories": info.categories,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": info.columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": info.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind of object."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render(info: CRDInfo) -> str:
    """The manifest's YAML text, stable across runs."""
    header = "# Generated by `python -m crds.generate` from the pydantic models in crds/. Do not edit.\n"
    return header + yaml.safe_dump(crd_manifest(info), sort_keys=False, width=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed manifests are stale")
    args = parser.parse_args(argv)
    MANIFESTS.mkdir(exist_ok=True)
    stale = []
    for info in CRDS:
        path = MANIFESTS / f"{GROUP}_{info.plural}.yaml"
        text = render(info)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale CRD manifests: {', '.join(stale)}; run `python -m crds.generate`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
