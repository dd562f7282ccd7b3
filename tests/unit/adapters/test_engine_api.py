"""The elastic-EP client sends the engines' own resize bodies and reports their answers (httpx MockTransport)."""

from __future__ import annotations

import json

import httpx

from adapters.engine_api import ElasticEPClient


def recorder(status: int, body: object) -> tuple[list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    return seen, httpx.MockTransport(handle)


async def test_vllm_resize_sends_the_size_and_drain_timeout() -> None:
    seen, transport = recorder(200, {"message": "Scaled to 4 data parallel engines"})
    client = ElasticEPClient(transport)
    assert await client.scale("http://engine:8000", 4, 120) == 200
    await client.close()
    assert seen[0].url.path == "/scale_elastic_ep"
    assert json.loads(seen[0].content) == {"new_data_parallel_size": 4, "drain_timeout": 120}


async def test_sglang_resize_sends_new_ep_size() -> None:
    seen, transport = recorder(200, {"message": "Scaling initiated from 2 to 4"})
    client = ElasticEPClient(transport)
    assert await client.scale("http://engine:30000", 4, 120, engine="sglang") == 200
    await client.close()
    assert json.loads(seen[0].content) == {"new_ep_size": 4}


async def test_an_engine_error_is_reported_as_its_status() -> None:
    _, transport = recorder(500, {"error": {"message": "Scale failed", "type": "Internal Server Error"}})
    client = ElasticEPClient(transport)
    assert await client.scale("http://engine:8000", 4, 120) == 500
    await client.close()


async def test_an_unreachable_engine_is_none() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = ElasticEPClient(httpx.MockTransport(refuse))
    assert await client.scale("http://engine:8000", 4, 120) is None
    await client.close()


async def test_canary_needs_a_whole_completion() -> None:
    _, ok = recorder(200, {"choices": [{"text": "x"}]})
    _, scaling = recorder(503, {"error": "The model is currently scaling. Please try again later."})
    for transport, expected in ((ok, True), (scaling, False)):
        client = ElasticEPClient(transport)
        assert await client.canary("http://engine:8000", "m") is expected
        await client.close()


async def test_requests_in_flight_are_the_engines_running_plus_waiting_gauges() -> None:
    text = (
        '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 3.0\n'
        '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} 2.0\n'
    )
    client = ElasticEPClient(httpx.MockTransport(lambda request: httpx.Response(200, text=text)))
    assert await client.inflight("http://engine:8000", "m") == 5
    await client.close()


async def test_requests_in_flight_are_unknown_when_metrics_cannot_be_read() -> None:
    client = ElasticEPClient(httpx.MockTransport(lambda request: httpx.Response(503, text="")))
    assert await client.inflight("http://engine:8000", "m") is None
    await client.close()
