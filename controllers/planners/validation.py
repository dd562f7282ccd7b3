"""Semantic checks the schema cannot make: GPU products exist, the model fits, the PriorityClass exists."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from catalogue.gpus import GPU_PROFILES, GPUProfile, known_gpu_names, lookup_gpu
from crds.reasons import Reason

BYTES_PER_PARAM = 2.0  # BF16 weights
USABLE_MEMORY = 0.9  # what engines may use by default (vLLM's gpu_memory_utilization)
MIN_KV_SHARE = 0.05  # keep at least this share of usable memory for the KV cache


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


def weights_gb(parameters_b: float) -> float:
    """BF16 weight bytes of a model, in GB."""
    return parameters_b * BYTES_PER_PARAM


def check_fits(field: str, parameters_b: float, gpus: int, types: list[str]) -> Problem | None:
    """ModelDoesNotFit when on no allowed product do `gpus` GPUs hold the weights plus a KV-cache share."""
    profiles, _ = allowed_gpus(types)
    if not profiles:
        return None  # nothing known to check against; check_gpu_types reports the unknown names
    need = weights_gb(parameters_b)
    fitting = [p for p in profiles if gpus * p.memory_gb * USABLE_MEMORY * (1 - MIN_KV_SHARE) >= need]
    if fitting:
        return None
    best = max(profiles, key=lambda p: p.memory_gb)
    return Problem(
        Reason.MODEL_DOES_NOT_FIT,
        f"{field}: {parameters_b:g}B parameters need {need:.0f} GB of BF16 weights, but {gpus} x "
        f"{best.short_name} ({best.memory_gb:g} GB each) leave {gpus * best.memory_gb * USABLE_MEMORY:.0f} GB usable; "
        f"raise the GPU count or allow larger GPUs",
    )


def check_priority_class(field: str, name: str | None, existing: Collection[str]) -> Problem | None:
    """PriorityClassNotFound when the named PriorityClass does not exist."""
    if name and name not in existing:
        return Problem(Reason.PRIORITY_CLASS_NOT_FOUND, f"{field}: PriorityClass {name!r} does not exist")
    return None


def first_problem(*problems: Problem | None) -> Problem | None:
    """The first problem found, in the order the checks were given."""
    return next((p for p in problems if p is not None), None)
