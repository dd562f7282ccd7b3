"""The committed CRD manifests are exactly what the pydantic models generate, and every field is described."""

from __future__ import annotations

from typing import Any

import pytest

from crds.generate import CRDS, MANIFESTS, crd_manifest, main, render


def test_committed_manifests_match_the_models() -> None:
    assert main(["--check"]) == 0, "run `python -m crds.generate` and commit crds/manifests"
    for info in CRDS:
        assert (MANIFESTS / f"ebbtide.dev_{info.plural}.yaml").read_text() == render(info)


def _walk(node: dict[str, Any], path: str) -> list[str]:
    missing = [] if "description" in node or path.endswith(".status") else [path]
    for name, sub in node.get("properties", {}).items():
        missing += _walk(sub, f"{path}.{name}")
    if node.get("items", {}).get("type") == "object":
        missing += _walk(node["items"], f"{path}[]")
    return missing


@pytest.mark.parametrize("info", CRDS, ids=lambda i: i.kind)
def test_every_spec_field_has_a_description(info: Any) -> None:
    schema = crd_manifest(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _walk(schema, "spec") == []


def test_llmservice_has_scale_subresource_and_short_name() -> None:
    llms = crd_manifest(CRDS[0])
    version = llms["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert llms["spec"]["names"]["shortNames"] == ["llms"]
    assert [c["name"] for c in version["additionalPrinterColumns"]][:3] == ["Model", "Ready", "GPUs"]


def test_nested_defaults_are_complete_so_cel_sees_every_field() -> None:
    spec = crd_manifest(CRDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["scaling"]["default"]["minReplicas"] == 1
    assert spec["properties"]["parallelism"]["default"] == {
        "tensor": 1,
        "pipeline": 1,
        "data": 1,
        "expert": 1,
        "elasticExpert": False,
    }
    assert "exclusiveMinimum" not in str(spec["properties"]["model"]["properties"]["parametersB"].get("minimum", ""))
    assert spec["properties"]["model"]["properties"]["parametersB"]["exclusiveMinimum"] is True


@pytest.mark.parametrize("info", CRDS, ids=lambda i: i.kind)
def test_conditions_are_a_map_by_type_so_each_writer_owns_its_own(info: Any) -> None:
    status = crd_manifest(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"], "a list-map key must be required"
