"""vLLM's elastic-EP routes as far as a CPU build answers them (it cannot enable elastic EP, docs/engines.md):
the request checks, the current size, the failure of any other size, and the scaling flag."""

from __future__ import annotations

import pytest

from tests.conformance.engines import Engine, both

pytestmark = pytest.mark.conformance


def error(status: int, message: str, phrase: str) -> tuple[int, dict[str, object]]:
    return status, {"error": {"message": message, "type": phrase, "param": None, "code": status}}


@both()
def test_scale_without_a_size_is_400(engine: Engine) -> None:
    with engine.client() as c:
        r = c.post("/scale_elastic_ep", json={})
    assert (r.status_code, r.json()) == error(400, "new_data_parallel_size is required", "Bad Request")


@both()
def test_scale_needs_a_json_content_type_and_a_json_object(engine: Engine) -> None:
    media = "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed"
    with engine.client() as c:
        plain = c.post("/scale_elastic_ep", content=b'{"new_data_parallel_size": 2}')
        broken = c.post("/scale_elastic_ep", content=b"{not json", headers={"content-type": "application/json"})
        listed = c.post("/scale_elastic_ep", json=[1, 2])
    assert (plain.status_code, plain.json()) == error(400, media, "Bad Request")
    assert (broken.status_code, broken.json()) == error(400, "Invalid JSON format", "Bad Request")
    expected = error(500, "'list' object has no attribute 'get'", "InternalServerError")
    assert (listed.status_code, listed.json()) == expected


@both()
def test_scale_with_a_bad_drain_timeout_is_400(engine: Engine) -> None:
    with engine.client() as c:
        r = c.post("/scale_elastic_ep", json={"new_data_parallel_size": 2, "drain_timeout": 0})
    assert (r.status_code, r.json()) == error(400, "drain_timeout must be a positive integer", "Bad Request")


@both()
def test_scale_to_the_current_size_is_200(engine: Engine) -> None:
    with engine.client() as c:
        r = c.post("/scale_elastic_ep", json={"new_data_parallel_size": 1})
    assert (r.status_code, r.json()) == (200, {"message": "Scaled to 1 data parallel engines"})


@both()
def test_scale_to_another_size_without_elastic_ep_is_500(engine: Engine) -> None:
    with engine.client(timeout=120) as c:
        r = c.post("/scale_elastic_ep", json={"new_data_parallel_size": 2})
        health = c.get("/health")
    assert (r.status_code, r.json()) == error(500, "Scale failed", "Internal Server Error")
    assert health.status_code == 200, "a refused resize leaves the engine serving"


@both()
def test_is_scaling_is_false_when_idle(engine: Engine) -> None:
    with engine.client() as c:
        r = c.post("/is_scaling_elastic_ep")
    assert (r.status_code, r.json()) == (200, {"is_scaling_elastic_ep": False})
