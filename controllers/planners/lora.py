"""LoRA adapters on a service's replicas, and publishing a finished FineTuneJob's adapter to its LLMService.

Replicas load and unload adapters through vLLM's runtime routes (`POST /v1/load_lora_adapter`,
`/v1/unload_lora_adapter`, with VLLM_ALLOW_RUNTIME_LORA_UPDATING); new replicas get `--lora-modules` at start
(engines.py). What a replica holds is what its `/v1/models` lists with a parent. Adapter files are never deleted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controllers.planners.engines import model_uri_to_path
from crds.finetunejob import FineTuneJob
from crds.llmservice import AdapterSpec, LLMService
from crds.reasons import EventType, Reason


@dataclass(frozen=True)
class ReplicaAdapters:
    """What one ready replica must do to hold exactly the service's adapters."""

    load: list[tuple[str, str]] = field(default_factory=list)  # (name, path inside the pod)
    unload: list[str] = field(default_factory=list)


def replica_actions(desired: list[AdapterSpec], loaded: Mapping[str, str]) -> ReplicaAdapters:
    """Load what is missing (or moved to another path), unload what the spec no longer lists."""
    want = {a.name: model_uri_to_path(a.source) for a in desired}
    unload = [name for name, path in loaded.items() if want.get(name) != path]
    load = [(name, path) for name, path in want.items() if loaded.get(name) != path]
    return ReplicaAdapters(load, sorted(unload))


def adapters_status(desired: list[AdapterSpec], loaded_by_replica: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """status.adapters: each adapter of the spec, the job that made it, and how many ready replicas hold it."""
    out = []
    for a in desired:
        path = model_uri_to_path(a.source)
        entry: dict[str, Any] = {
            "name": a.name,
            "source": a.source,
            "loadedReplicas": sum(1 for loaded in loaded_by_replica if loaded.get(a.name) == path),
        }
        if a.from_job:
            entry["fromJob"] = a.from_job
        out.append(entry)
    return out


@dataclass(frozen=True)
class AdaptersCondition:
    """The LLMService's AdaptersLoaded condition: False naming the field of every adapter a replica refused."""

    loaded: bool
    reason: Reason
    message: str


def adapters_condition(desired: list[AdapterSpec], refused: Mapping[str, str]) -> AdaptersCondition:
    """From this pass's refusals (adapter name -> the engine's answer)."""
    if not desired:
        return AdaptersCondition(True, Reason.ADAPTER_UNLOADED, "spec.adapters lists none")
    bad = [(i, a.name) for i, a in enumerate(desired) if a.name in refused]
    if not bad:
        return AdaptersCondition(True, Reason.ADAPTER_LOADED, f"{len(desired)} adapter(s) on every ready replica")
    message = "; ".join(f"spec.adapters[{i}] ({name}): {refused[name]}" for i, name in bad)
    return AdaptersCondition(False, Reason.ADAPTER_LOAD_FAILED, message)


@dataclass(frozen=True)
class Publication:
    """The service's new adapter list (None: unchanged) and the job's Published condition and Event."""

    adapters: list[dict[str, Any]] | None
    published: bool
    reason: Reason
    message: str
    event: tuple[str, str, str] | None = None


def publish(job: FineTuneJob, adapter: str, service: LLMService | None) -> Publication | None:
    """What publishing a succeeded job's adapter (at `adapter`) to spec.output.publishTo takes; None: no target."""
    out = job.spec.output
    if out is None or not out.publish_to:
        return None
    if service is None:
        return Publication(
            None,
            False,
            Reason.PUBLISH_TARGET_NOT_FOUND,
            f"spec.output.publishTo: no LLMService {out.publish_to!r} in this namespace; "
            f"the adapter stays at {adapter}",
        )
    entry = AdapterSpec(name=out.adapter_name, source=adapter, from_job=job.metadata.name)
    current = list(service.spec.adapters)
    done = f"adapter {out.adapter_name} ({adapter}) is listed on LLMService {out.publish_to}"
    if entry in current:
        return Publication(None, True, Reason.ADAPTER_PUBLISHED, done)
    kept = [a for a in current if a.name != entry.name]
    adapters = [a.model_dump(by_alias=True, exclude_none=True) for a in [*kept, entry]]
    return Publication(
        adapters, True, Reason.ADAPTER_PUBLISHED, done, (EventType.NORMAL, Reason.ADAPTER_PUBLISHED, done)
    )
