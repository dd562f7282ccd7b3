"""The width-change shell against an in-memory cluster and engine: the order of what it does to pods and engine."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, cast

from adapters.engine_api import ElasticEPClient
from adapters.kube import Kube
from controllers.planners.gangs import Owner, joiner_pods, replica_pods, template_hash
from controllers.planners.snapshot import PodView, pod_view
from controllers.shells.rescaling import RescaleState, rescale_service
from crds import labels as L
from crds.llmservice import LLMService
from simulator.engine.config import parse_args


class World:
    """Pods as the API holds them, and the engine calls made, in order."""

    def __init__(self) -> None:
        self.pods: dict[str, PodView] = {}
        self.log: list[str] = []
        self.scale_answer = 200

    # Kube facade
    async def create_pod(self, manifest: dict[str, Any]) -> bool:
        name = manifest["metadata"]["name"]
        self.log.append(f"create {name}")
        self.pods[name] = replace(pod_view(manifest), ready=False)
        return True

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.log.append(f"delete {name}")
        self.pods[name] = replace(self.pods[name], deleting=True)

    async def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        p = self.pods[name]
        labels, annotations = dict(p.labels), dict(p.annotations)
        meta = patch["metadata"]
        for target, changes in ((labels, meta.get("labels", {})), (annotations, meta.get("annotations", {}))):
            for k, v in changes.items():
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = v
        if L.ENTRYPOINT in p.labels and L.ENTRYPOINT not in labels:
            self.log.append(f"hold {name}")
        if L.ENTRYPOINT not in p.labels and L.ENTRYPOINT in labels:
            self.log.append(f"resume {name}")
        self.pods[name] = replace(p, labels=labels, annotations=annotations)

    # ElasticEPClient
    async def scale(self, url: str, width: int, drain_timeout_s: int, *, engine: str = "vllm") -> int | None:
        self.log.append(f"scale {url} {width}")
        return self.scale_answer

    async def inflight(self, url: str, model: str) -> int | None:
        return 0

    async def canary(self, url: str, model: str) -> bool:
        self.log.append(f"canary {url}")
        return True


def elastic_service(expert: int, engine: str = "simulated") -> tuple[dict[str, Any], LLMService]:
    body: dict[str, Any] = {
        "metadata": {"name": "lite", "namespace": "ns", "uid": "u1", "generation": expert},
        "spec": {
            "model": {"name": "deepseek-v2-lite", "source": "hf://deepseek-ai/DeepSeek-V2-Lite", "parametersB": 15.7,
                      "architecture": "moe", "experts": 64, "expertsPerToken": 6, "activeParametersB": 2.4},
            "engine": {"type": engine},
            "gpu": {"count": 2},
            "parallelism": {"tensor": 2, "expert": expert, "elasticExpert": True, "maxExpert": 4},
            "replicas": 2,
        },
    }  # fmt: skip
    return body, LLMService.model_validate(body)


def running_replicas(world: World, svc: LLMService) -> None:
    for r in range(2):
        [manifest] = replica_pods(Owner("LLMService", "lite", "ns", "u1"), svc.spec, r, "ebbtide")
        manifest["metadata"]["annotations"] |= {L.ENGINE_URL: f"http://r{r}", L.GPU_PRODUCT: "NVIDIA-H100-80GB-HBM3"}
        world.pods[manifest["metadata"]["name"]] = replace(pod_view(manifest), ready=True, phase="Running")


async def change(
    world: World, expert: int, state: RescaleState, start: float, status: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    """Reconcile passes, one a second, until nothing is under way; joiners become Ready between passes."""
    body, svc = elastic_service(expert)
    conditions: list[dict[str, Any]] = list(status.get("conditions", []))
    now = start
    for _ in range(60):
        body["status"] = status
        out = await rescale_service(
            cast(Kube, world), body, svc, list(world.pods.values()), conditions, now, "ebbtide", 3.0, state
        )
        status = {**status, **out.status}
        await asyncio.sleep(0)
        for name, p in list(world.pods.items()):
            if p.deleting:
                del world.pods[name]
            elif not p.ready:
                url = {**p.annotations, L.ENGINE_URL: f"http://{name}"}
                world.pods[name] = replace(p, ready=True, phase="Running", annotations=url)
        now += 1.0
        entries = [p for p in world.pods.values() if L.EXPERT_WIDTH in p.annotations]
        if not out.busy and all(p.annotations[L.EXPERT_WIDTH] == str(expert) for p in entries):
            break
    return now, {**status, "conditions": conditions}


def layout_slots(status: dict[str, Any]) -> list[int]:
    return [len(slots) for slots in status["expertLayout"].values()]


async def test_widening_and_narrowing_one_replica_at_a_time_in_the_engines_order() -> None:
    world = World()
    running_replicas(world, elastic_service(2)[1])
    state = RescaleState(client=cast(ElasticEPClient, world))
    now, wide = await change(world, 4, state, 1000.0, {})
    assert world.log == [
        "create lite-r0-ep-2", "create lite-r0-ep-3", "hold lite-r0", "scale http://r0 4", "canary http://r0",
        "resume lite-r0",
        "create lite-r1-ep-2", "create lite-r1-ep-3", "hold lite-r1", "scale http://r1 4", "canary http://r1",
        "resume lite-r1",
    ]  # fmt: skip
    assert layout_slots(wide) == [32] * 4, "ranks keep their slots: a wider EP holds replicas of hot experts"
    world.log.clear()
    _, narrow = await change(world, 2, state, now, wide)
    assert world.log == [
        "hold lite-r0", "scale http://r0 2", "canary http://r0", "resume lite-r0", "delete lite-r0-ep-2",
        "delete lite-r0-ep-3",
        "hold lite-r1", "scale http://r1 2", "canary http://r1", "resume lite-r1", "delete lite-r1-ep-2",
        "delete lite-r1-ep-3",
    ]  # fmt: skip
    assert layout_slots(narrow) == [32] * 2
    assert sorted(world.pods) == ["lite-r0", "lite-r1"]
    rescaling = next(c for c in narrow["conditions"] if c["type"] == "Rescaling")
    assert rescaling["status"] == "False" and rescaling["reason"] == "Rescaled"


async def test_an_engine_refusing_the_width_rolls_back_before_the_commit_and_is_not_retried() -> None:
    world = World()
    world.scale_answer = 400
    running_replicas(world, elastic_service(2)[1])
    state = RescaleState(client=cast(ElasticEPClient, world))
    _, status = await change(world, 4, state, 1000.0, {})
    assert world.log == [
        "create lite-r0-ep-2", "create lite-r0-ep-3", "hold lite-r0", "scale http://r0 4", "resume lite-r0",
        "delete lite-r0-ep-2", "delete lite-r0-ep-3",
    ]  # fmt: skip
    assert sorted(world.pods) == ["lite-r0", "lite-r1"], "the joiners are gone and replica 1 was never touched"
    assert {p.annotations[L.EXPERT_WIDTH] for p in world.pods.values()} == {"2"}
    failed = next(c for c in status["conditions"] if c["type"] == "RescaleFailed")
    assert failed["status"] == "True" and "the engine refused the width (HTTP 400)" in failed["message"]


async def test_an_engine_without_elastic_ep_rolls_back_and_the_condition_says_whole_replicas() -> None:
    world = World()
    world.scale_answer = 404  # an image without /scale_elastic_ep
    running_replicas(world, elastic_service(2)[1])
    state = RescaleState(client=cast(ElasticEPClient, world))
    _, status = await change(world, 4, state, 1000.0, {})
    assert "scale http://r0 4" in world.log and world.log[-2:] == ["delete lite-r0-ep-2", "delete lite-r0-ep-3"]
    assert sorted(world.pods) == ["lite-r0", "lite-r1"] and world.log.count("resume lite-r0") == 1
    assert {p.annotations[L.EXPERT_WIDTH] for p in world.pods.values()} == {"2"}
    failed = next(c for c in status["conditions"] if c["type"] == "RescaleFailed")
    assert failed["status"] == "True" and failed["reason"] == "ElasticEPUnavailable"
    assert "HTTP 404" in failed["message"] and "whole replicas" in failed["message"]


def test_joining_rank_pods_are_one_gang_outside_the_service_with_the_ranks_gpus() -> None:
    _, svc = elastic_service(4)
    pods = joiner_pods(Owner("LLMService", "lite", "ns", "u1"), svc.spec, 1, "op-9", range(2, 4), 1, "ebbtide")
    assert [p["metadata"]["name"] for p in pods] == ["lite-r1-ep-2", "lite-r1-ep-3"]
    for p in pods:
        labels = p["metadata"]["labels"]
        assert L.ENTRYPOINT not in labels and labels[L.GANG] == "lite-r1-op-9"
        assert p["metadata"]["annotations"][L.GANG_SIZE] == "2"
        [container] = p["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        args = container["args"]
        args[args.index("--gpu") + 1] = "H100"
        assert parse_args(args).perf_model().num_gpus == 1, "the simulated rank process holds the rank's GPUs"


def test_an_elastic_width_change_does_not_roll_the_gangs_but_other_changes_do() -> None:
    assert template_hash(elastic_service(2)[1].spec) == template_hash(elastic_service(4)[1].spec)
    body, _ = elastic_service(2)
    body["spec"]["parallelism"]["elasticExpert"] = False
    plain = LLMService.model_validate(body).spec
    body["spec"]["parallelism"]["expert"] = 1
    assert template_hash(plain) != template_hash(LLMService.model_validate(body).spec)


def test_vllm_joining_ranks_are_ray_workers_of_the_entry_pod() -> None:
    body, _ = elastic_service(4)
    body["spec"]["engine"] = {"type": "vllm"}
    spec = LLMService.model_validate(body).spec
    [pod] = joiner_pods(Owner("LLMService", "lite", "ns", "u1"), spec, 0, "op-1", range(2, 3), 1, "ebbtide")
    [container] = pod["spec"]["containers"]
    assert container["args"] == ["ray start --address=lite-r0.lite-pods.ns.svc:6379 --block"]


async def test_a_restarted_operator_asks_for_the_resize_again_and_finishes_the_operation() -> None:
    world = World()
    running_replicas(world, elastic_service(2)[1])
    first = RescaleState(client=cast(ElasticEPClient, world))
    body, svc = elastic_service(4)
    conditions: list[dict[str, Any]] = []
    for now in (1000.0, 1001.0, 1002.0, 1006.0):  # joiners created, Ready, held, routers gone: the call goes out
        await rescale_service(cast(Kube, world), body, svc, list(world.pods.values()), conditions, now, "e", 3.0, first)
        for name, p in list(world.pods.items()):
            if not p.ready:
                world.pods[name] = replace(p, ready=True, annotations={**p.annotations, L.ENGINE_URL: f"http://{name}"})
    await asyncio.sleep(0)
    assert world.log[-1] == "scale http://r0 4"
    world.log.clear()
    await change(world, 4, RescaleState(client=cast(ElasticEPClient, world)), 1007.0, {})
    assert world.log[:3] == ["scale http://r0 4", "canary http://r0", "resume lite-r0"]
    assert {p.annotations.get(L.EXPERT_WIDTH) for p in world.pods.values() if p.labels[L.ROLE] == "server"} == {"4"}


async def test_a_width_the_experts_cannot_take_is_refused_with_the_numbers_once_and_nothing_moves() -> None:
    world = World()
    running_replicas(world, elastic_service(2)[1])
    body, svc = elastic_service(1)  # 64 experts on 32 slots a rank need 2 ranks at least
    state = RescaleState(client=cast(ElasticEPClient, world))
    conditions: list[dict[str, Any]] = []
    events = []
    for now in (1000.0, 1001.0, 1002.0):
        out = await rescale_service(
            cast(Kube, world), body, svc, list(world.pods.values()), conditions, now, "e", 3.0, state
        )
        events += out.events
    assert world.log == [] and sorted(world.pods) == ["lite-r0", "lite-r1"]
    [(kind, reason, message)] = events
    assert (kind, reason) == ("Warning", "RescaleRefused") and "minimum width is 2" in message
    [failed] = [c for c in conditions if c["type"] == "RescaleFailed"]
    assert failed["status"] == "True" and failed["message"] == message


async def test_sglang_asked_to_narrow_is_replaced_whole_and_says_so_once_per_replica() -> None:
    world = World()
    running_replicas(world, elastic_service(2, "sglang")[1])
    for name, p in world.pods.items():
        world.pods[name] = replace(p, annotations={**p.annotations, L.EXPERT_WIDTH: "4"})
    body, svc = elastic_service(2, "sglang")
    conditions: list[dict[str, Any]] = []
    state = RescaleState(client=cast(ElasticEPClient, world))
    passes = []
    for now in (1000.0, 1001.0):
        passes.append(
            await rescale_service(
                cast(Kube, world), body, svc, list(world.pods.values()), conditions, now, "ebbtide", 3.0, state
            )
        )
    assert not any(line.startswith(("scale", "create", "hold")) for line in world.log), "nothing resizes in place"
    assert [e[1] for e in passes[0].events] == ["ElasticEPUnavailable"] and passes[1].events == [], "said once"
    assert passes[0].busy
    rescaling = next(c for c in conditions if c["type"] == "Rescaling")
    assert rescaling["status"] == "True" and rescaling["reason"] == "ElasticEPUnavailable"
    assert "only grows" in rescaling["message"] and "replacing it whole" in rescaling["message"]
    assert not any(c["type"] == "RescaleFailed" for c in conditions), "a fallback, not a failure"
    # plan_service replaced both replicas (drained, started again at EP 2): the condition clears.
    for name, p in world.pods.items():
        world.pods[name] = replace(p, annotations={**p.annotations, L.EXPERT_WIDTH: "2"})
    await rescale_service(
        cast(Kube, world), body, svc, list(world.pods.values()), conditions, 1100.0, "ebbtide", 3.0, state
    )
    rescaling = next(c for c in conditions if c["type"] == "Rescaling")
    assert rescaling["status"] == "False" and rescaling["reason"] == "Rescaled"
