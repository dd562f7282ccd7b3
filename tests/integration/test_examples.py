"""The kubectl experience: every example is accepted by the real API server, defaults are filled in, and
`kubectl explain` documents the fields a user reaches for."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crds.generate import CRDS, crd_manifest
from tests.kube import ROOT, Cluster

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture
def example_ns(cluster: Cluster) -> Iterator[str]:
    name = f"ex-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_passes_server_side_validation(cluster: Cluster, example_ns: str, path: Path) -> None:
    proc = cluster.kubectl("apply", "--dry-run=server", "-n", example_ns, "-f", str(path))
    assert "(server dry run)" in proc.stdout, proc.stdout


def test_applied_example_is_stored_with_schema_defaults(cluster: Cluster, example_ns: str) -> None:
    cluster.kubectl("apply", "-n", example_ns, "-f", str(ROOT / "examples" / "dense-service.yaml"))
    spec = cluster.get("llms", "llama3-8b", "-n", example_ns)["spec"]
    # Written in the example: kept as is. Left out: filled from the CRD schema's defaults.
    assert spec["replicas"] == 2 and spec["gpu"]["types"] == ["H100"]
    assert spec["engine"]["port"] == 8000
    assert spec["parallelism"] == {"tensor": 1, "pipeline": 1, "data": 1, "expert": 1, "elasticExpert": False}
    assert spec["scaling"]["slo"]["attainment"] == 0.99
    assert spec["drainGracePeriodSeconds"] == 60
    cluster.kubectl("delete", "llms", "llama3-8b", "-n", example_ns)


def schema_description(plural: str, path: str) -> str:
    info = next(i for i in CRDS if i.plural == plural)
    node: dict[str, Any] = crd_manifest(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path.split("."):
        node = node["properties"][part]
        if node.get("type") == "array" and "properties" in node.get("items", {}):
            node = node["items"]
    return str(node["description"])


@pytest.mark.parametrize(
    ("resource", "plural", "path"),
    [
        ("llms", "llmservices", "spec.replicas"),
        ("llms", "llmservices", "spec.gpu.types"),
        ("llms", "llmservices", "spec.scaling.slo.ttftSeconds"),
        ("llms", "llmservices", "spec.model.source"),
        ("ftj", "finetunejobs", "spec.checkpoint.intervalSeconds"),
        ("ftj", "finetunejobs", "spec.preemptible"),
        ("pb", "powerbudgets", "spec.budgetWatts"),
        ("llms", "llmservices", "status.conditions"),
    ],
)
def test_kubectl_explain_describes_the_field(cluster: Cluster, resource: str, plural: str, path: str) -> None:
    out = cluster.kubectl("explain", f"{resource}.{path}").stdout
    match = re.search(r"DESCRIPTION:\n(.*?)(\n\n|\Z)", out, re.S)
    assert match and match.group(1).strip(), out
    described = " ".join(match.group(1).split())
    assert " ".join(schema_description(plural, path).split()) in described, out
