"""The model catalogue: transformer shapes the performance model needs, from the models' published configs.

Pure reference data and lookups; no I/O. Parameter counts include embeddings, as model cards report them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

Architecture = Literal["dense", "moe"]


@dataclass(frozen=True)
class ModelSpec:
    """One decoder-only transformer as the performance model sees it."""

    name: str
    params_b: float  # total parameters, billions (all experts for MoE)
    active_params_b: float  # parameters used per token, billions (== params_b for dense)
    architecture: Architecture
    experts: int  # routed experts per MoE layer, 0 for dense
    layers: int
    hidden: int  # model width; also the attention query width (heads x head_dim)
    kv_heads: int  # key/value heads (grouped-query attention when < query heads)
    head_dim: int
    dtype_bytes: int = 2  # bytes per weight and KV element (BF16)
    experts_per_token: int = 0  # routed experts each token uses (top-k), 0 for dense
    max_context: int = 4096  # longest sequence the model was trained for

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V cache one token occupies across all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights (every expert), which is what must fit in GPU memory."""
        return self.params_b * 1e9 * self.dtype_bytes

    @property
    def expert_params_b(self) -> float:
        """Parameters of one routed expert summed over all layers, billions (0 for dense)."""
        if self.architecture != "moe" or self.experts <= self.experts_per_token:
            return 0.0
        return (self.params_b - self.active_params_b) / (self.experts - self.experts_per_token)

    @property
    def shared_params_b(self) -> float:
        """Parameters every token uses (attention, embeddings, shared experts), billions."""
        return self.params_b - self.experts * self.expert_params_b


def _dense(name: str, params_b: float, layers: int, hidden: int, kv_heads: int, max_context: int) -> ModelSpec:
    return ModelSpec(name, params_b, params_b, "dense", 0, layers, hidden, kv_heads, 128, max_context=max_context)


def _moe(
    name: str,
    params_b: float,
    active_b: float,
    experts: int,
    top_k: int,
    layers: int,
    hidden: int,
    kv_heads: int,
    max_context: int,
) -> ModelSpec:
    return ModelSpec(
        name,
        params_b,
        active_b,
        "moe",
        experts,
        layers,
        hidden,
        kv_heads,
        128,
        experts_per_token=top_k,
        max_context=max_context,
    )


# Shapes from each model's config.json on the Hugging Face Hub (num_hidden_layers, hidden_size,
# num_key_value_heads; head_dim is 128 for all of them).
MODEL_CATALOG: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _dense("llama-2-7b", 6.74, 32, 4096, 32, 4096),
        _dense("llama-2-13b", 13.02, 40, 5120, 40, 4096),
        _dense("llama-2-70b", 68.98, 80, 8192, 8, 4096),
        _dense("llama-3-8b", 8.03, 32, 4096, 8, 8192),
        _dense("llama-3-70b", 70.55, 80, 8192, 8, 8192),
        _dense("llama-3.1-8b", 8.03, 32, 4096, 8, 131072),
        _dense("llama-3.1-70b", 70.55, 80, 8192, 8, 131072),
        _dense("llama-3.1-405b", 405.85, 126, 16384, 8, 131072),
        _dense("mistral-7b", 7.24, 32, 4096, 8, 32768),
        _dense("opt-13b", 12.85, 40, 5120, 40, 2048),
        _dense("opt-66b", 65.7, 64, 9216, 72, 2048),
        _moe("mixtral-8x7b", 46.70, 12.88, 8, 2, 32, 4096, 8, 32768),
        _moe("mixtral-8x22b", 140.62, 39.16, 8, 2, 56, 6144, 8, 65536),
        # Qwen1.5-MoE-A2.7B: 60 routed experts, top-4, plus 4 always-on shared experts (counted as shared).
        _moe("qwen-moe-a2.7b", 14.32, 2.69, 60, 4, 24, 2048, 16, 8192),
        # DeepSeek-V2-Lite (huggingface.co/deepseek-ai/DeepSeek-V2-Lite: model card 15.7B total / 2.4B active;
        # config.json: 27 layers, hidden 2048, 64 routed experts, top-6, 2 shared experts, 163840 context). Its
        # attention is MLA, which caches one 512-wide latent plus a 64-wide RoPE key per layer: 576 elements,
        # written here as one KV "head" of 288 so that K + V come to the same bytes per token.
        ModelSpec("deepseek-v2-lite", 15.7, 2.4, "moe", 64, 27, 2048, 1, 288, experts_per_token=6, max_context=163840),
    )
}

_ALIASES = {
    "qwen1.5-moe-a2.7b": "qwen-moe-a2.7b",
    "llama-3.3-70b": "llama-3.1-70b",
    "mistral-7b-v0.1": "mistral-7b",
}
# Suffixes that name a fine-tune or packaging of the same architecture.
_SUFFIXES = re.compile(r"(-instruct|-chat|-hf|-base|-v\d+(\.\d+)*)$")


def _normalise(name: str) -> str:
    key = name.strip().lower().rsplit("/", 1)[-1]
    key = key.removeprefix("meta-")
    while True:
        stripped = _SUFFIXES.sub("", key)
        if stripped == key:
            break
        key = stripped
    return _ALIASES.get(key, key)


def lookup_model(name: str) -> ModelSpec | None:
    """Find a catalogue model by name or Hugging Face id ("meta-llama/Meta-Llama-3-70B-Instruct"), else None."""
    key = _normalise(name)
    if key in MODEL_CATALOG:
        return MODEL_CATALOG[key]
    return MODEL_CATALOG.get(name.strip().lower())


def known_model_names() -> list[str]:
    """Every catalogue name, sorted, for error messages."""
    return sorted(MODEL_CATALOG)


# Dense Llama-family models keep width ~= 128 x depth and ~12 x layers x hidden^2 parameters.
_WIDTH_PER_LAYER = 128
_PARAMS_PER_LAYER_HIDDEN2 = 12


def generic_model(
    params_b: float,
    architecture: Architecture = "dense",
    experts: int = 0,
    active_params_b: float | None = None,
    *,
    experts_per_token: int = 2,
    name: str | None = None,
) -> ModelSpec:
    """A plausible Llama-like shape for a model known only by its size (GQA with 8 KV heads, BF16)."""
    if not params_b > 0:
        raise ValueError(f"params_b must be positive, got {params_b}")
    if architecture == "moe":
        if experts < 2:
            raise ValueError(f"a MoE model needs at least 2 experts, got {experts}")
        if not 1 <= experts_per_token <= experts:
            raise ValueError(f"experts_per_token must be in 1..{experts}, got {experts_per_token}")
        if active_params_b is None:
            # Typical split: ~10% of parameters are shared (attention, embeddings), the rest routed.
            active_params_b = params_b * (0.1 + 0.9 * experts_per_token / experts)
    elif architecture == "dense":
        if experts:
            raise ValueError("experts are only meaningful for architecture 'moe'")
        active_params_b = params_b if active_params_b is None else active_params_b
        if active_params_b != params_b:
            raise ValueError("a dense model uses all its parameters: active_params_b must equal params_b")
    else:
        raise ValueError(f"architecture must be 'dense' or 'moe', got {architecture!r}")
    if not 0 < active_params_b <= params_b:
        raise ValueError(f"active_params_b must be in (0, {params_b}], got {active_params_b}")
    # The per-token path (active parameters) sets depth and width, as in Mixtral vs. its dense sibling.
    layers = max(1, round((active_params_b * 1e9 / (_PARAMS_PER_LAYER_HIDDEN2 * _WIDTH_PER_LAYER**2)) ** (1 / 3)))
    hidden = max(128, 128 * round(math.sqrt(active_params_b * 1e9 / (_PARAMS_PER_LAYER_HIDDEN2 * layers)) / 128))
    heads = hidden // 128
    label = name or f"generic-{params_b:g}b" + ("-moe" if architecture == "moe" else "")
    return ModelSpec(
        name=label,
        params_b=params_b,
        active_params_b=active_params_b,
        architecture=architecture,
        experts=experts if architecture == "moe" else 0,
        layers=layers,
        hidden=hidden,
        kv_heads=min(8, heads),
        head_dim=128,
        experts_per_token=experts_per_token if architecture == "moe" else 0,
        max_context=8192,
    )


def resolve_model(
    name: str,
    params_b: float,
    architecture: Architecture = "dense",
    experts: int = 0,
    active_params_b: float | None = None,
    *,
    experts_per_token: int = 2,
) -> ModelSpec:
    """The catalogue's model of that name, else a generic shape of that size: what validation, the capacity seed
    and the simulator all reason about, so they agree on whether it fits. Raises ValueError on an impossible shape."""
    known = lookup_model(name)
    if known is not None:
        return known
    return generic_model(
        params_b,
        architecture,
        experts if architecture == "moe" else 0,
        active_params_b,
        experts_per_token=experts_per_token,
        name=name,
    )
