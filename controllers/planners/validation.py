"""Semantic checks the schema cannot make: GPU products exist, the model fits, the PriorityClass exists."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from catalogue.gpus import GPU_PROFILES, GPUProfile, known_gpu_names, lookup_gpu
from catalogue.models import ModelSpec
from catalogue.perf import PerfModel
from crds.reasons import Reason


@dataclass(frozen=True)
class Problem:
    """Why an object cannot be reconciled as written: a condition reason and a message naming the field."""

    reason: str
    message: str


def allowed_gpus(types: list[str]) -> tuple[list[GPUProfile], list[str]]:
    """The profiles `types` names (all known ones when empty) and the names nobody knows."""
    if not types:
        return list(GPU_PROFILES.values()), []
    found, unknown = [], []
    for name in types:
        profile = lookup_gpu(name)
        if profile is None:
            unknown.append(name)
        elif profile not in found:
            found.append(profile)
    return found, unknown


def check_gpu_types(field: str, types: list[str]) -> Problem | None:
    """UnknownGPUType when a listed product is not in the catalogue."""
    _, unknown = allowed_gpus(types)
    if unknown:
        return Problem(
            Reason.UNKNOWN_GPU_TYPE,
            f"{field}: unknown GPU type(s) {', '.join(unknown)}; known: {', '.join(known_gpu_names())}",
        )
    return None


def check_fits(field: str, model: ModelSpec, gpus: int, types: list[str]) -> Problem | None:
    """ModelDoesNotFit when on no allowed product do `gpus` GPUs hold the weights plus a KV-cache block: the
    catalogue's performance model decides, the same one the capacity seed and the simulated engines use."""
    profiles, _ = allowed_gpus(types)
    if not profiles:
        return None  # nothing known to check against; check_gpu_types reports the unknown names
    models = [PerfModel(model, p, tensor_parallel=gpus) for p in profiles]
    if any(m.fits for m in models):
        return None
    best = max(models, key=lambda m: m.gpu.memory_gb)
    return Problem(Reason.MODEL_DOES_NOT_FIT, f"{field}: {best.fit_problem()}")


def check_priority_class(field: str, name: str | None, existing: Collection[str]) -> Problem | None:
    """PriorityClassNotFound when the named PriorityClass does not exist."""
    if name and name not in existing:
        return Problem(Reason.PRIORITY_CLASS_NOT_FOUND, f"{field}: PriorityClass {name!r} does not exist")
    return None


def first_problem(*problems: Problem | None) -> Problem | None:
    """The first problem found, in the order the checks were given."""
    return next((p for p in problems if p is not None), None)
