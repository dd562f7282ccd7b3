"""The OpenAI-compatible API as vLLM 0.32.0 answers it: health, models, completions, chat, streaming, errors."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.engines import MAX_MODEL_LEN, Engine, both
from tests.conformance.wire import DONE, recorded_http, recorded_json, recorded_stream, stream

pytestmark = pytest.mark.conformance

PROMPT = "The tide goes out"
CHAT = [{"role": "user", "content": "Hello"}]


def completion(engine: Engine, **extra: Any) -> dict[str, Any]:
    """A greedy completion of exactly `max_tokens` tokens (ignore_eos), as a request body."""
    return {"model": engine.model, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "ignore_eos": True, **extra}


def chat(engine: Engine, **extra: Any) -> dict[str, Any]:
    return {"model": engine.model, "messages": CHAT, "max_tokens": 5, "temperature": 0, "ignore_eos": True, **extra}


@both()
def test_health_is_200_with_an_empty_body(engine: Engine) -> None:
    with engine.client() as c:
        r = c.get("/health")
    assert (r.status_code, r.content) == (200, b"")


@both()
def test_version_names_a_version(engine: Engine) -> None:
    with engine.client() as c:
        r = c.get("/version")
    assert r.status_code == 200
    assert set(r.json()) == {"version"}


@both()
def test_an_unknown_route_is_404_with_a_detail(engine: Engine) -> None:
    with engine.client() as c:
        r = c.get("/no/such/route")
    assert (r.status_code, r.json()) == recorded_http("error-route.txt")


@both()
def test_models_lists_the_served_name_with_vllm_fields(engine: Engine) -> None:
    with engine.client() as c:
        body = c.get("/v1/models").json()
    assert body["object"] == "list"
    [entry] = body["data"]
    assert entry["id"] == engine.model
    assert entry["object"] == "model"
    assert entry["owned_by"] == "vllm"
    assert entry["parent"] is None
    assert entry["max_model_len"] == MAX_MODEL_LEN
    assert set(entry) == set(recorded_json("models.json")["data"][0])
    [perm] = entry["permission"]
    assert perm["object"] == "model_permission"
    assert set(perm) == set(recorded_json("models.json")["data"][0]["permission"][0])


@both()
def test_a_completion_has_openai_fields_and_exact_usage(engine: Engine) -> None:
    with engine.client() as c:
        r = c.post("/v1/completions", json=completion(engine))
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == engine.model
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert isinstance(choice["text"], str) and choice["text"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@both()
def test_a_completion_has_the_same_fields_as_vllm(engine: Engine) -> None:
    with engine.client() as c:
        body = c.post("/v1/completions", json=completion(engine)).json()
    want = recorded_json("completion.json")
    assert set(body) == set(want)
    assert set(body["choices"][0]) == set(want["choices"][0])
    assert set(body["usage"]) == set(want["usage"])


@both()
def test_a_chat_completion_answers_as_the_assistant(engine: Engine) -> None:
    with engine.client() as c:
        r = c.post("/v1/chat/completions", json=chat(engine))
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


@both()
def test_a_completion_stream_ends_with_a_usage_chunk_and_done(engine: Engine) -> None:
    with engine.client() as c:
        r, events = stream(
            c, "/v1/completions", completion(engine, stream=True, stream_options={"include_usage": True})
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == DONE
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert len(chunks) == len(events) - 1
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("cmpl-")
    assert {c["object"] for c in chunks} == {"text_completion"}
    *token_chunks, usage_chunk = chunks
    # vLLM may put several tokens into one chunk when the engine runs ahead of the API server.
    assert token_chunks and all(len(c["choices"]) == 1 and "usage" not in c for c in token_chunks)
    assert [c["choices"][0]["finish_reason"] for c in token_chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in token_chunks[:-1])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 6
    u = usage_chunk["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


@both()
def test_a_stream_without_include_usage_has_no_usage_chunk(engine: Engine) -> None:
    with engine.client() as c:
        r, events = stream(c, "/v1/completions", completion(engine, stream=True))
    assert r.status_code == 200 and events[-1] == DONE
    chunks = [e for e in events if isinstance(e, dict)]
    assert all(c["choices"] and "usage" not in c for c in chunks)


@both()
def test_a_chat_stream_opens_with_the_assistant_role(engine: Engine) -> None:
    with engine.client() as c:
        r, events = stream(c, "/v1/chat/completions", chat(engine, stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and events[-1] == DONE
    chunks = [e for e in events if isinstance(e, dict)]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_the_recorded_stream_has_the_shape_the_checks_expect() -> None:
    """The recorded vLLM stream passes the same structural reading (keeps the fixture and the checks honest)."""
    events = recorded_stream("completion-stream.txt")
    assert events[-1] == DONE
    usage_chunk = events[-2]
    assert isinstance(usage_chunk, dict) and usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 4


@both()
def test_an_unknown_model_is_a_nested_404_error(engine: Engine) -> None:
    with engine.client() as c:
        r = c.post("/v1/completions", json={**completion(engine), "model": "no-such-model"})
    status, want = recorded_http("error-unknown-model.txt")
    assert r.status_code == status == 404
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == set(want["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == ("NotFoundError", 404)
    assert "no-such-model" in body["error"]["message"]


@pytest.mark.parametrize(
    ("extra", "recorded"),
    [({"max_tokens": 0}, "error-max-tokens.txt"), ({"max_tokens": MAX_MODEL_LEN + 88}, "error-too-long.txt")],
    ids=["max_tokens-0", "longer-than-context"],
)
@both()
def test_a_bad_request_is_a_nested_400_error_naming_the_parameter(
    engine: Engine, extra: dict[str, Any], recorded: str
) -> None:
    with engine.client() as c:
        r = c.post("/v1/completions", json={**completion(engine), "ignore_eos": False, **extra})
    status, want = recorded_http(recorded)
    assert r.status_code == status == 400
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == want["error"]["type"] == "BadRequestError"
    assert body["error"]["code"] == 400
    assert body["error"]["param"] == want["error"]["param"] == "max_tokens"


@both()
def test_max_tokens_past_the_context_stops_at_the_context(engine: Engine) -> None:
    with engine.client() as c:
        r = c.post("/v1/completions", json=completion(engine, max_tokens=MAX_MODEL_LEN - 3))
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == MAX_MODEL_LEN
