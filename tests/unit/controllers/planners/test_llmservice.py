"""LLMService planning: gangs follow spec.replicas, scale-in drains newest first, bad specs get a reason."""

from __future__ import annotations

from dataclasses import replace

from controllers.planners.gangs import Owner, pod_roles, replica_pods
from controllers.planners.llmservice import plan_service
from crds import labels as L
from crds.llmservice import LLMService
from tests.unit.controllers.builders import pod, service

NOW = 1_000.0


def names(manifests: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return [m["metadata"]["name"] for m in manifests]


def test_creates_one_gang_per_missing_replica_with_deterministic_names() -> None:
    plan = plan_service(service(replicas=2), "uid", [], set(), NOW)
    assert names(plan.create) == ["svc-r0", "svc-r1"]
    assert plan.status["replicas"] == 2 and plan.status["readyReplicas"] == 0
    assert plan.status["selector"] == "ebbtide.dev/service=svc"


def test_ready_when_all_gangs_ready() -> None:
    plan = plan_service(service(replicas=2), "uid", [pod(0), pod(1)], set(), NOW)
    assert plan.create == [] and plan.status["phase"] == "Ready" and plan.status["ready"] == "2/2"
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1


def test_scale_in_takes_newest_gangs_out_of_routing_then_deletes_them_once_routers_let_go() -> None:
    pods = [pod(0), pod(1), pod(2)]
    plan = plan_service(service(replicas=1), "uid", pods, set(), NOW)
    assert plan.start_drain == [2, 1] and plan.delete == []
    draining = [pod(0), pod(1, **{L.DRAIN_STARTED: str(NOW)}), pod(2, **{L.DRAIN_STARTED: str(NOW + 2)})]
    assert plan_service(service(replicas=1), "uid", draining, set(), NOW + 4.9, deregistration_s=5).delete == []
    plan = plan_service(service(replicas=1), "uid", draining, set(), NOW + 5, deregistration_s=5)
    assert plan.delete == ["svc-r1"], "the engine's own graceful shutdown drains it; the grace is not waited out"
    assert plan_service(service(replicas=1), "uid", draining, set(), NOW + 7, deregistration_s=5).delete == [
        "svc-r1",
        "svc-r2",
    ]


def test_new_gangs_never_reuse_an_index_still_held_by_a_draining_gang() -> None:
    pods = [pod(0), pod(1, **{L.DRAIN_STARTED: str(NOW)})]
    plan = plan_service(service(replicas=2), "uid", pods, set(), NOW)
    assert names(plan.create) == ["svc-r2"]


def test_a_failed_member_restarts_the_whole_gang() -> None:
    svc = service(replicas=1, gpu={"count": 16, "perNode": 8}, parallelism={"tensor": 8, "pipeline": 2})
    pods = [pod(0, "leader", template=svc), pod(0, "worker-0", phase="Failed", template=svc)]
    plan = plan_service(svc, "uid", pods, set(), NOW)
    assert sorted(plan.delete) == ["svc-r0-leader", "svc-r0-worker-0"]
    assert any(e[1] == "GangRestarted" for e in plan.events)


def test_half_created_gang_is_completed_not_duplicated() -> None:
    svc = service(replicas=1, gpu={"count": 16, "perNode": 8}, parallelism={"tensor": 8, "pipeline": 2})
    # The packer binds gangs all or nothing, so the half a crashed operator created is still unbound.
    unbound = replace(pod(0, "leader", ready=False, template=svc), node=None)
    plan = plan_service(svc, "uid", [unbound], set(), NOW)
    assert names(plan.create) == ["svc-r0-worker-0"] and plan.delete == []


def test_a_member_lost_with_its_node_restarts_the_whole_gang_under_a_new_index() -> None:
    svc = service(replicas=1, gpu={"count": 16, "perNode": 8}, parallelism={"tensor": 8, "pipeline": 2})
    survivor = pod(0, "leader", template=svc, **{L.GANG_SIZE: "2"})
    plan = plan_service(svc, "uid", [survivor], set(), NOW)
    assert plan.delete == ["svc-r0-leader"]
    assert names(plan.create) == ["svc-r1-leader", "svc-r1-worker-0"], "the whole gang again, never a lone worker"
    assert any(e[1] == "GangRestarted" and "lost" in e[2] for e in plan.events)


def test_multi_node_replica_is_a_leader_plus_workers() -> None:
    svc = service(gpu={"count": 32, "perNode": 8}, parallelism={"tensor": 8, "pipeline": 4})
    roles = [(r.role, g) for r, g in pod_roles(svc.spec)]
    assert roles == [("leader", 8), ("worker", 8), ("worker", 8), ("worker", 8)]
    pods = replica_pods(Owner("LLMService", "svc", "ns", "u"), svc.spec, 0, "ebbtide-packer")
    assert {p["metadata"]["annotations"][L.GANG_SIZE] for p in pods} == {"4"}
    assert {p["spec"]["schedulerName"] for p in pods} == {"ebbtide-packer"}


def test_model_too_big_is_ready_false_with_event_and_no_pods() -> None:
    svc = service(model={"name": "m", "source": "hf://o/m", "parametersB": 70}, gpu={"count": 1, "types": ["L4"]})
    plan = plan_service(svc, "uid", [], set(), NOW)
    assert plan.create == [] and plan.problem is not None
    assert plan.problem.reason == "ModelDoesNotFit" and "spec.model.parametersB" in plan.problem.message
    assert plan.events[0][:2] == ("Warning", "ModelDoesNotFit")
    again = service(model={"name": "m", "source": "hf://o/m", "parametersB": 70}, gpu={"count": 1, "types": ["L4"]})
    again.status.conditions = []
    second = plan_service(
        svc.model_copy(update={"status": svc.status.model_validate(plan.status)}), "uid", [], set(), NOW + 5
    )
    assert second.events == [], "the same problem must not repeat its Event every pass"


def test_unknown_gpu_and_missing_priority_class() -> None:
    assert plan_service(service(gpu={"count": 1, "types": ["B300"]}), "u", [], set(), NOW).problem.reason == (  # type: ignore[union-attr]
        "UnknownGPUType"
    )
    svc = service(priorityClassName="gold")
    assert plan_service(svc, "u", [], set(), NOW).problem.reason == "PriorityClassNotFound"  # type: ignore[union-attr]
    assert plan_service(svc, "u", [], {"gold"}, NOW).problem is None


def test_unschedulable_pods_mark_degraded() -> None:
    p = pod(0, ready=False, phase="Pending")
    p = p.__class__(**{**p.__dict__, "unschedulable": "0/8 nodes are available: insufficient nvidia.com/gpu"})
    plan = plan_service(service(replicas=1), "uid", [p], set(), NOW)
    degraded = next(c for c in plan.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "Unschedulable"


def elastic_moe(engine: str, expert: int = 2) -> LLMService:
    moe = {"name": "deepseek-v2-lite", "source": "hf://deepseek-ai/DeepSeek-V2-Lite", "parametersB": 15.7,
           "architecture": "moe", "experts": 64, "expertsPerToken": 6, "activeParametersB": 2.4}  # fmt: skip
    return service(
        replicas=2,
        model=moe,
        engine={"type": engine},
        gpu={"count": 2, "types": ["H100"]},
        parallelism={"tensor": 2, "expert": expert, "elasticExpert": True, "maxExpert": 4},
    )


def test_a_replica_an_engine_cannot_narrow_in_place_is_replaced_whole_one_at_a_time() -> None:
    sglang = elastic_moe("sglang")
    wide = [pod(r, template=sglang, **{L.EXPERT_WIDTH: "4"}) for r in range(2)]
    plan = plan_service(sglang, "uid", wide, set(), NOW)
    assert len(plan.start_drain) == 1, "SGLang only grows: one replica drains to start again at EP 2"
    assert any(reason == "RollingUpdate" for _, reason, _ in plan.events)
    vllm = elastic_moe("vllm")
    in_place = [pod(r, template=vllm, **{L.EXPERT_WIDTH: "4"}) for r in range(2)]
    assert plan_service(vllm, "uid", in_place, set(), NOW).start_drain == [], "vLLM narrows in place"
    grown = [pod(r, template=sglang, **{L.EXPERT_WIDTH: "2"}) for r in range(2)]
    assert plan_service(elastic_moe("sglang", 4), "uid", grown, set(), NOW).start_drain == [], "it grows in place"
