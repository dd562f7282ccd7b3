"""Adapters on replicas and publishing a finished job's adapter: what to load, unload, list and write."""

from __future__ import annotations

from controllers.planners.engines import PodRole, serving_command
from controllers.planners.gangs import template_hash
from controllers.planners.lora import adapters_condition, adapters_status, publish, replica_actions
from crds.llmservice import AdapterSpec, LLMService
from crds.reasons import Reason
from tests.unit.controllers.builders import job

ADAPTER = "pvc://ebbtide-checkpoints/ns/ft/adapter"


def service(*adapters: AdapterSpec) -> LLMService:
    return LLMService.model_validate(
        {
            "metadata": {"name": "chat", "namespace": "ns"},
            "spec": {
                "model": {"name": "m", "source": "hf://org/m", "parametersB": 8},
                "adapters": [a.model_dump(by_alias=True, exclude_none=True) for a in adapters],
            },
        }
    )


def test_a_replica_loads_what_is_missing_and_unloads_what_the_spec_dropped() -> None:
    desired = [AdapterSpec(name="tide", source=ADAPTER), AdapterSpec(name="old", source="pvc://a/old")]
    actions = replica_actions(desired, {"old": "/models/a/old", "gone": "/models/x"})
    assert actions.load == [("tide", "/models/ebbtide-checkpoints/ns/ft/adapter")] and actions.unload == ["gone"]
    moved = replica_actions([AdapterSpec(name="old", source="pvc://a/new")], {"old": "/models/a/old"})
    assert moved.unload == ["old"] and moved.load == [("old", "/models/a/new")]
    assert replica_actions(desired, {"tide": "/models/ebbtide-checkpoints/ns/ft/adapter", "old": "/models/a/old"}) == (
        replica_actions([], {})
    )


def test_status_lists_each_adapter_with_its_job_and_the_replicas_holding_it() -> None:
    desired = [AdapterSpec(name="tide", source=ADAPTER, from_job="ft")]
    held = [{"tide": "/models/ebbtide-checkpoints/ns/ft/adapter"}, {}]
    assert adapters_status(desired, held) == [{"name": "tide", "source": ADAPTER, "fromJob": "ft", "loadedReplicas": 1}]


def test_publishing_adds_the_adapter_once_and_a_missing_target_is_a_condition() -> None:
    j = job(output={"adapterName": "tide", "publishTo": "chat"})
    first = publish(j, ADAPTER, service())
    assert first is not None and first.published and first.event is not None
    assert first.adapters == [{"name": "tide", "source": ADAPTER, "fromJob": "ft"}]
    again = publish(j, ADAPTER, service(AdapterSpec(name="tide", source=ADAPTER, from_job="ft")))
    assert again is not None and again.adapters is None and again.event is None and again.published
    missing = publish(j, ADAPTER, None)
    assert missing is not None and not missing.published and missing.reason == "PublishTargetNotFound"
    assert "spec.output.publishTo" in missing.message
    assert publish(job(output={"adapterName": "tide"}), ADAPTER, service()) is None


def test_a_service_started_with_enable_lora_takes_adapters_without_new_engines() -> None:
    on = service().model_copy(deep=True)
    on.spec.engine.args = ["--enable-lora", "--max-lora-rank", "16"]
    with_adapter = on.model_copy(deep=True)
    with_adapter.spec.adapters = [AdapterSpec(name="tide", source=ADAPTER)]
    assert template_hash(on.spec) == template_hash(with_adapter.spec)  # published at run time, no rollout
    _, args = serving_command(with_adapter.spec, PodRole("server", 0, 1))
    assert args.count("--enable-lora") == 1
    assert args[args.index("--lora-modules") + 1] == "tide=/models/ebbtide-checkpoints/ns/ft/adapter"
    off = service()
    assert template_hash(off.spec) != template_hash(with_adapter.spec.model_copy(update={"engine": off.spec.engine}))


def test_a_refused_adapter_turns_adapters_loaded_false_naming_its_field() -> None:
    desired = [AdapterSpec(name="tide", source=ADAPTER), AdapterSpec(name="wide", source="pvc://a/rank64")]
    answer = "chat-0 answered HTTP 400: rank 64 is greater than max_lora_rank 16"
    refused = adapters_condition(desired, {"wide": answer})
    assert (refused.loaded, refused.reason) == (False, Reason.ADAPTER_LOAD_FAILED)
    assert refused.message == f"spec.adapters[1] (wide): {answer}"
    held = adapters_condition(desired, {})
    assert (held.loaded, held.reason) == (True, Reason.ADAPTER_LOADED)
    assert adapters_condition([], {}).loaded
