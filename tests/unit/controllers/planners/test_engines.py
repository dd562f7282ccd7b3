"""Engine command lines: the simulated engine parses what the operator writes and models the same GPU count."""

from __future__ import annotations

import pytest
import yaml

from controllers.planners.drain import TEARDOWN_MARGIN_S
from controllers.planners.engines import PodRole, serving_command
from controllers.planners.gangs import Owner, pod_roles, replica_pods
from crds import labels as L
from crds.llmservice import LLMService
from simulator.engine.config import parse_args
from tests.kube import ROOT
from tests.unit.controllers.builders import service

EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("name", ["dense-service", "moe-service", "pd-service"])
def test_simulated_engine_accepts_the_operator_command_line_with_the_same_gpus(name: str) -> None:
    svc = LLMService.model_validate(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()))
    for role, gpus in pod_roles(svc.spec):
        command, args = serving_command(svc.spec, role)
        assert command == ["python", "-m", "simulator.engine"]
        args[args.index("--gpu") + 1] = "H100"  # what the packer's annotation supplies at start
        cfg = parse_args(args)
        assert cfg.perf_model().num_gpus == gpus
        assert svc.spec.model.name in cfg.served_model_names


def test_vllm_multi_node_replica_runs_ray_leader_and_workers() -> None:
    svc = LLMService.model_validate(
        {
            "metadata": {"name": "big"},
            "spec": {
                "model": {"name": "llama-3-405b", "source": "hf://meta/llama-405b", "parametersB": 405},
                "gpu": {"count": 16, "perNode": 8},
                "parallelism": {"tensor": 8, "pipeline": 2},
            },
        }
    )
    leader = serving_command(svc.spec, PodRole("leader", 0, 2, "big-r0-leader.big-pods.ns.svc"))
    worker = serving_command(svc.spec, PodRole("worker", 0, 2, "big-r0-leader.big-pods.ns.svc"))
    assert "ray start --head" in leader[1][0] and "--pipeline-parallel-size 2" in leader[1][0]
    assert "--address=big-r0-leader.big-pods.ns.svc:6379" in worker[1][0]


@pytest.mark.parametrize("engine", ["vllm", "simulated"])
def test_engines_drain_for_the_services_grace_and_the_pod_waits_for_them(engine: str) -> None:
    svc = service(replicas=1, engine={"type": engine}, drainGracePeriodSeconds=45)
    [pod] = replica_pods(Owner("LLMService", "svc", "ns", "uid"), svc.spec, 0, "default-scheduler")
    [container] = pod["spec"]["containers"]
    argv = [*container["command"], *container["args"]]
    assert argv[argv.index("--shutdown-timeout") + 1] == "45"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 45 + TEARDOWN_MARGIN_S
    assert pod["metadata"]["labels"][L.ENTRYPOINT] == "true", "the Service selects entry pods by this label"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_the_simulated_engine_reads_the_shutdown_timeout_the_operator_writes() -> None:
    svc = service(replicas=1, drainGracePeriodSeconds=45)
    [(role, _)] = pod_roles(svc.spec)
    _, args = serving_command(svc.spec, role)
    args[args.index("--gpu") + 1] = "H100"
    assert parse_args(args).shutdown_timeout_s == 45


def test_sglang_pods_export_metrics_and_get_no_vllm_only_flag() -> None:
    svc = service(replicas=1, engine={"type": "sglang"})
    [(role, _)] = pod_roles(svc.spec)
    _, args = serving_command(svc.spec, role)
    assert "--enable-metrics" in args, "without it SGLang's /metrics is 404 and the autoscaler is blind"
    assert "--shutdown-timeout" not in args, "SGLang drains on SIGTERM by itself and has no such flag"


def _elastic_moe(engine: str) -> LLMService:
    doc = yaml.safe_load((EXAMPLES / "moe-service.yaml").read_text())
    doc["spec"]["engine"] = {"type": engine}
    doc["spec"]["parallelism"] |= {"elasticExpert": True, "maxExpert": 4}
    return LLMService.model_validate(doc)


def test_the_simulated_engine_starts_with_elastic_ep_up_to_the_widest_width() -> None:
    svc = _elastic_moe("simulated")
    [(role, gpus)] = pod_roles(svc.spec)
    _, args = serving_command(svc.spec, role)
    args[args.index("--gpu") + 1] = "H100"
    cfg = parse_args(args)
    assert cfg.enable_elastic_ep and cfg.enable_eplb, "vLLM refuses elastic EP without EPLB; so does the simulator"
    assert cfg.elastic_ep_max_dp_size == 4
    assert cfg.perf_model().num_gpus == gpus, "elastic EP does not change what the pod starts with"


def test_vllm_gets_its_elastic_ep_flags_counted_in_data_parallel_ranks() -> None:
    svc = _elastic_moe("vllm")
    [(role, _)] = pod_roles(svc.spec)
    command, [script] = serving_command(svc.spec, role)
    assert command == ["/bin/sh", "-c"] and script.startswith("ray start --head --port=6379 && vllm serve ")
    args = script.split()
    for flag in ("--enable-expert-parallel", "--enable-eplb", "--enable-elastic-ep"):
        assert flag in args
    # maxExpert 4 over ranks of tensor 2 GPUs: vLLM may grow to 2 data-parallel ranks, on its Ray cluster only.
    assert args[args.index("--elastic-ep-max-dp-size") + 1] == "2"
    assert args[args.index("--data-parallel-backend") + 1] == "ray"


def test_sglang_names_its_elastic_ep_backend_and_dense_services_get_no_elastic_flag() -> None:
    _, args = serving_command(_elastic_moe("sglang").spec, pod_roles(_elastic_moe("sglang").spec)[0][0])
    assert args[args.index("--elastic-ep-backend") + 1] == "mooncake"
    dense = service(replicas=1, engine={"type": "vllm"})
    _, dense_args = serving_command(dense.spec, pod_roles(dense.spec)[0][0])
    assert not any("elastic" in a for a in dense_args)
