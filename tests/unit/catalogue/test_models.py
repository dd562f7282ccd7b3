"""The model catalogue: real shapes, lookups by Hugging Face id, MoE parameter split, generic shapes."""

from __future__ import annotations

import pytest

from catalogue.models import MODEL_CATALOG, generic_model, lookup_model

REQUIRED = (
    "llama-2-7b", "llama-2-13b", "llama-3-8b", "llama-3-70b", "llama-2-70b", "opt-13b", "opt-66b",
    "mixtral-8x7b", "qwen-moe-a2.7b",
)  # fmt: skip


def test_catalogue_has_the_models_others_rely_on() -> None:
    assert set(REQUIRED) <= set(MODEL_CATALOG)


def test_kv_bytes_per_token_follows_the_architecture() -> None:
    # Llama-3-70B: 80 layers x 8 KV heads x 128 dims x K and V x 2 bytes.
    assert MODEL_CATALOG["llama-3-70b"].kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    # Llama-2-7B has no grouped-query attention, so 4x the KV of Llama-3-8B.
    assert MODEL_CATALOG["llama-2-7b"].kv_bytes_per_token == 4 * MODEL_CATALOG["llama-3-8b"].kv_bytes_per_token


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("meta-llama/Meta-Llama-3-70B", "llama-3-70b"),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("meta-llama/Llama-2-7b-chat-hf", "llama-2-7b"),
        ("LLAMA-2-13B", "llama-2-13b"),
        ("facebook/opt-66b", "opt-66b"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("Qwen/Qwen1.5-MoE-A2.7B-Chat", "qwen-moe-a2.7b"),
    ],
)
def test_lookup_accepts_names_and_hugging_face_ids(name: str, expected: str) -> None:
    spec = lookup_model(name)
    assert spec is not None and spec.name == expected


def test_lookup_of_an_unknown_model_is_none() -> None:
    assert lookup_model("acme/unknown-9000b") is None


@pytest.mark.parametrize("name", ["mixtral-8x7b", "mixtral-8x22b", "qwen-moe-a2.7b"])
def test_moe_split_reproduces_total_and_active_parameters(name: str) -> None:
    m = MODEL_CATALOG[name]
    assert m.shared_params_b + m.experts * m.expert_params_b == pytest.approx(m.params_b)
    assert m.shared_params_b + m.experts_per_token * m.expert_params_b == pytest.approx(m.active_params_b)
    assert 0 < m.shared_params_b < m.active_params_b < m.params_b


@pytest.mark.parametrize("params_b", [1.0, 7.0, 70.0, 400.0])
def test_generic_dense_model_has_plausible_dimensions(params_b: float) -> None:
    m = generic_model(params_b)
    assert m.architecture == "dense" and m.active_params_b == params_b
    assert m.hidden % 128 == 0 and m.kv_heads <= m.hidden // m.head_dim
    # A Llama-like block holds ~12 hidden^2 parameters; the shape must account for the size within 25%.
    assert 12 * m.layers * m.hidden**2 / 1e9 == pytest.approx(params_b, rel=0.25)


def test_generic_seventy_billion_looks_like_llama_70b() -> None:
    m = generic_model(70.0)
    assert 60 <= m.layers <= 90 and 7168 <= m.hidden <= 9216


def test_generic_moe_model_activates_a_fraction_of_its_parameters() -> None:
    m = generic_model(47.0, "moe", experts=8)
    assert m.experts == 8 and m.experts_per_token == 2
    assert m.active_params_b < m.params_b / 2
    assert m.shared_params_b + m.experts * m.expert_params_b == pytest.approx(m.params_b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"params_b": 0.0}, "positive"),
        ({"params_b": 10.0, "architecture": "moe", "experts": 1}, "at least 2 experts"),
        ({"params_b": 10.0, "experts": 8}, "only meaningful"),
        ({"params_b": 10.0, "architecture": "moe", "experts": 8, "active_params_b": 20.0}, "active_params_b"),
    ],
)
def test_generic_model_rejects_impossible_shapes(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generic_model(**kwargs)  # type: ignore[arg-type]
