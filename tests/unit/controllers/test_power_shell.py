"""The power manager's shell over the watch-fed cache: DCGM in, caps on the node annotation for the agent,
PowerBudget status as its own field manager, and the admission answer the autoscaler uses."""

from __future__ import annotations

import json
from typing import Any, cast

from adapters.cache import ClusterCache
from adapters.dcgm import DcgmScraper, parse_dcgm
from adapters.kube import FieldManager, Kube
from adapters.nvml import CAPS_ANNOTATION
from catalogue.gpus import GPU_PRODUCT_LABEL, GPU_RESOURCE
from controllers.planners.power import GPUSample
from controllers.shells.power import PowerManager
from crds import labels as L
from crds.llmservice import LLMService
from crds.reasons import Reason
from simulator.fleet import dcgm
from tests.unit.controllers.builders import RecordingKube

H100 = "NVIDIA-H100-80GB-HBM3"


class Readings:
    """DCGM pages per URL, rendered as the fleet's exporter renders them."""

    def __init__(self, pages: dict[str, str]) -> None:
        self.pages = pages

    async def scrape(self, url: str) -> list[GPUSample] | str:
        return parse_dcgm(self.pages[url]) if url in self.pages else f"{url}: unreachable"


def node(name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {GPU_PRODUCT_LABEL: H100, "rack": "a"},
            "annotations": {"ebbtide.dev/dcgm-url": f"http://{name}"},
            "resourceVersion": "1",
        },
        "status": {"allocatable": {GPU_RESOURCE: "2"}},
    }


def pod(ns: str, name: str, service: str, priority: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {L.SERVICE: service}, "resourceVersion": "1"},
        "spec": {"nodeName": "n0", "priority": priority},
    }


def budget(watts: float) -> dict[str, Any]:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": "rack-a", "generation": 1, "resourceVersion": "1"},
        "spec": {"nodeSelector": {"rack": "a"}, "budgetWatts": watts},
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": name, "namespace": "team", "generation": 1, "resourceVersion": "1"},
        "spec": {
            "model": {"name": "llama-3-8b", "source": "hf://x/y", "parametersB": 8},
            "engine": {"type": "simulated"},
            "gpu": {"count": 1, "types": ["H100"]},
            "replicas": 1,
            "scaling": {"policy": "none"},
        },
    }


def manager(watts: float, draw: tuple[float, float]) -> tuple[PowerManager, RecordingKube]:
    kube = RecordingKube()
    cache = ClusterCache(cast(Kube, kube))
    for informer in cache.informers():
        informer.replace([])
    cache.nodes.apply("ADDED", node("n0"))
    cache.pods.apply("ADDED", pod("team", "chat-r0", "chat", 1000))
    cache.pods.apply("ADDED", pod("team", "batch-r0", "batch", 0))
    cache.powerbudgets.apply("ADDED", budget(watts))
    for name in ("chat", "batch"):
        cache.llmservices.apply("ADDED", service(name))
    readings = [
        dcgm.GPUReading(0, draw[0], 0, 0, 700.0, ("team", "chat-r0")),
        dcgm.GPUReading(1, draw[1], 0, 0, 700.0, ("team", "batch-r0")),
    ]
    page = dcgm.render("n0", H100, readings)
    pm = PowerManager(cast(Kube, kube), cache, cast(DcgmScraper, Readings({"http://n0": page})))
    return pm, kube


async def test_over_budget_the_low_priority_gpu_is_capped_on_its_node_annotation_and_the_budget_says_so() -> None:
    pm, kube = manager(1100.0, (600.0, 600.0))  # measured 1200 W: the emergency path
    plan = await pm.tick(100.0)
    assert plan is not None
    (annotation,) = [args for name, args in kube.calls if name == "annotate_node"]
    node_name, annotations = annotation
    caps = json.loads(annotations[CAPS_ANNOTATION])
    assert node_name == "n0" and caps["0"] is None and 200 <= caps["1"] <= 500
    pb_status = [(s, m) for p, n, s, m in kube.statuses if p == "powerbudgets"]
    (status, manager_name), *_ = pb_status
    assert manager_name == FieldManager.POWER and status["caps"] == {"n0": {"1": caps["1"]}}
    assert {"forecastWatts", "drawnWatts", "headroomWatts"} <= set(status)
    assert ("event", Reason.BUDGET_EXCEEDED) in kube.calls and ("event", Reason.CAPS_CHANGED) in kube.calls
    batch = [s for p, n, s, m in kube.statuses if p == "llmservices" and n == "batch"]
    assert batch == [{"powerCapWatts": caps["1"]}]


async def test_a_scale_up_the_domain_cannot_power_is_refused_with_the_numbers() -> None:
    pm, _ = manager(1300.0, (600.0, 600.0))
    await pm.tick(0.0)
    chat = LLMService.model_validate(service("chat"))
    refused = pm.admit(chat, replicas=3, now_replicas=1)
    assert refused is not None and not refused.allowed and "1300 W budget" in refused.message
    assert pm.admit(chat, replicas=1, now_replicas=1) is None  # no scale-up, nothing to ask


async def test_without_budgets_the_caps_it_wrote_are_lifted() -> None:
    pm, kube = manager(1100.0, (600.0, 600.0))
    await pm.tick(0.0)
    pm.cache.powerbudgets.apply("DELETED", budget(1100.0))
    kube.calls.clear()
    assert await pm.tick(1.0) is None
    assert ("annotate_node", ("n0", {CAPS_ANNOTATION: "{}"})) in kube.calls
