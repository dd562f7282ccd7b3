"""The engine's HTTP surface: vLLM's OpenAI-compatible API, /metrics, and the simulator's admin endpoints.

Request validation and error bodies follow vLLM 0.32.0's OpenAI server: `{"error": {"message", "type", "param",
"code"}}` with 400 BadRequestError for malformed requests (naming the parameter) and 404 NotFoundError for unknown
models. SIGTERM follows vLLM's `--shutdown-timeout` (see `shutdown()`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from simulator.engine.clock import Clock
from simulator.engine.config import EngineConfig
from simulator.engine.core import (
    ElasticScaleBusy,
    ElasticScaleFailed,
    ElasticScaleRejected,
    EngineDead,
    EngineDraining,
    SequenceSpec,
    SimEngine,
    TokenEvent,
)
from simulator.engine.text import count_chat_tokens, count_text_tokens, derive_seed, natural_length
from simulator.engine.trainer import Trainer

log = logging.getLogger(__name__)

ENGINE_KEY = web.AppKey("engine", SimEngine)
TRAINER_KEY = web.AppKey("trainer", Trainer)
CONFIG_KEY = web.AppKey("config", EngineConfig)

_CHAT_ROLES = {"system", "user", "assistant", "tool", "developer", "function"}
VERSION = "0.0.0+ebbtide.sim"


class ApiError(Exception):
    """An error answered with vLLM's error body."""

    def __init__(self, status: int, message: str, err_type: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.param = param


def bad_request(message: str, param: str | None = None, value: object = None) -> ApiError:
    """400 BadRequestError; like vLLM's validation errors, one about a parameter names it and its value."""
    if param is not None:
        message = f"{message} (parameter={param}, value={value})"
    return ApiError(400, message, "BadRequestError", param)


def error_response(status: int, message: str, err_type: str, param: str | None = None) -> web.Response:
    """vLLM's error body (nested under "error" since vLLM 0.10.1)."""
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return web.json_response(body, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.err_type, exc.param)
    except web.HTTPNotFound:
        return web.json_response({"detail": "Not Found"}, status=404)
    except web.HTTPMethodNotAllowed:
        return web.json_response({"detail": "Method Not Allowed"}, status=405)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error_response(500, "internal server error", "InternalServerError")


async def _json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"Invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    return body


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# OpenAI request parsing


class _Params:
    """The sampling parameters the simulator honours, validated as vLLM validates them."""

    def __init__(self, body: dict[str, Any], *, chat: bool) -> None:
        max_tokens = body.get("max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
            raise bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens)
        self.max_tokens: int | None = max_tokens
        n = body.get("n", 1)
        if n is None:
            n = 1
        if not _is_int(n) or n < 1:
            raise bad_request(f"n must be at least 1, got {n}.", "n", n)
        self.n: int = n
        temperature = body.get("temperature")
        if temperature is not None and (not _is_number(temperature) or temperature < 0):
            raise bad_request(f"temperature must be non-negative, got {temperature}.", "temperature", temperature)
        top_p = body.get("top_p")
        if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
            raise bad_request(f"top_p must be in (0, 1], got {top_p}.", "top_p", top_p)
        seed = body.get("seed")
        if seed is not None and not _is_int(seed):
            raise bad_request(f"seed must be an integer, got {seed!r}.")
        self.seed: int | None = seed
        min_tokens = body.get("min_tokens", 0) or 0
        if not _is_int(min_tokens) or min_tokens < 0:
            raise bad_request(
                f"min_tokens must be greater than or equal to 0, got {min_tokens}.", "min_tokens", min_tokens
            )
        if self.max_tokens is not None and min_tokens > self.max_tokens:
            raise bad_request(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got {min_tokens}.",
                "min_tokens",
                min_tokens,
            )
        self.min_tokens: int = min_tokens
        self.ignore_eos = bool(body.get("ignore_eos", False))
        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise bad_request(f"stream must be a boolean, got {stream!r}.")
        self.stream = bool(stream)
        options = body.get("stream_options")
        if options is not None:
            if not self.stream:
                raise bad_request("Stream options can only be defined when `stream=True`.")
            if not isinstance(options, dict):
                raise bad_request("stream_options must be an object.")
        self.include_usage = bool((options or {}).get("include_usage", False))


def _completion_prompts(body: dict[str, Any]) -> list[tuple[str, int]]:
    """(seed key, token count) per prompt of a /v1/completions request."""
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise bad_request("Either prompt or prompt_embeds must be provided and non-empty.")
    if isinstance(prompt, str):
        return [(prompt, count_text_tokens(prompt) + 1)]  # +1: the BOS token vLLM adds to text prompts
    if isinstance(prompt, list):
        if all(_is_int(t) for t in prompt):
            _check_token_ids(prompt)
            return [(",".join(map(str, prompt)), len(prompt))]
        if all(isinstance(p, str) for p in prompt):
            return [(p, count_text_tokens(p) + 1) for p in prompt]
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            for p in prompt:
                _check_token_ids(p)
            return [(",".join(map(str, p)), len(p)) for p in prompt]
    raise bad_request("prompt must be a string, a list of token ids, or a list of either")


def _check_token_ids(ids: list[int]) -> None:
    if any(t < 0 for t in ids):
        raise bad_request("Token ids must be non-negative integers")


def _chat_prompt(body: dict[str, Any]) -> tuple[str, int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of chat messages")
    contents: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise bad_request(f"messages[{i}] must be an object")
        role = msg.get("role")
        if role not in _CHAT_ROLES:
            raise bad_request(f"messages[{i}].role must be one of {sorted(_CHAT_ROLES)}, got {role!r}")
        content = msg.get("content")
        if content is None:
            contents.append("")
        elif isinstance(content, str):
            contents.append(content)
        elif isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad_request(f"messages[{i}].content: only text parts are supported by this model")
                parts.append(part["text"])
            contents.append("\n".join(parts))
        else:
            raise bad_request(f"messages[{i}].content must be a string or a list of content parts")
    return json.dumps(messages, sort_keys=True), count_chat_tokens(contents)


def _requested_model(engine: SimEngine, body: dict[str, Any]) -> str:
    model = body.get("model")
    names = engine.cfg.served_model_names
    if model is None:
        return names[0]
    if not isinstance(model, str) or (model not in names and model not in engine.lora):
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    return model


def _sequence_specs(engine: SimEngine, prompts: list[tuple[str, int]], params: _Params) -> list[SequenceSpec]:
    limit = engine.cfg.max_model_len
    specs = []
    if params.max_tokens is not None and params.max_tokens > limit:
        raise bad_request(
            f"max_tokens={params.max_tokens} cannot be greater than max_model_len={limit}. "
            "Please request fewer output tokens.",
            "max_tokens",
            params.max_tokens,
        )
    for p_index, (key, prompt_tokens) in enumerate(prompts):
        if prompt_tokens >= limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                f"{prompt_tokens} input tokens, which exceeds this limit even without any output tokens. "
                "Please reduce the length of the input prompt.",
                "input_tokens",
                prompt_tokens,
            )
        for j in range(params.n):
            seed = derive_seed(engine.cfg.seed, params.seed, key, j)
            room = limit - prompt_tokens
            if params.max_tokens is not None:
                # vLLM 0.32.0 clamps max_tokens to the room the context leaves, and stops there ("length").
                max_tokens, reason = min(params.max_tokens, room), "length"
            elif params.ignore_eos:
                max_tokens, reason = room, "length"
            else:
                # No max_tokens: the simulated model stops at its own end of sequence.
                max_tokens = max(params.min_tokens, natural_length(seed, room))
                reason = "length" if max_tokens >= room else "stop"
            specs.append(SequenceSpec(prompt_tokens, max_tokens, reason, seed, p_index * params.n + j))
    return specs


# OpenAI endpoints


async def _generate(request: web.Request, *, chat: bool) -> web.StreamResponse:
    engine = request.app[ENGINE_KEY]
    body = await _json_object(request)
    model = _requested_model(engine, body)
    params = _Params(body, chat=chat)
    prompts = [_chat_prompt(body)] if chat else _completion_prompts(body)
    specs = _sequence_specs(engine, prompts, params)
    try:
        with engine.request_slot():
            rids, events = engine.submit(specs)
            try:
                meta = _ResponseMeta(chat, model, sum(tokens for _, tokens in prompts), len(specs))
                if engine.cfg.return_routed_experts and engine.cfg.model.architecture == "moe":
                    meta.routes = [_routes_for(engine, spec.prompt_tokens) for spec in specs]
                if params.stream:
                    meta.include_usage = params.include_usage
                    return await _stream(request, events, meta)
                return await _collect(events, meta)
            finally:
                engine.abort(rids)  # no-op for finished sequences; frees KV cache if the client went away
    except (EngineDraining, EngineDead) as exc:
        # What vLLM answers during a graceful shutdown (its engine client refuses new work) and after its engine
        # core died (EngineDeadError): this 500.
        raise ApiError(500, str(exc), "InternalServerError") from None


class _ResponseMeta:
    def __init__(self, chat: bool, model: str, prompt_tokens: int, choices: int) -> None:
        self.chat = chat
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.choices = choices
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.include_usage = False
        self.routes: list[Callable[[int], str]] | None = None  # per choice: generated tokens -> routed_experts

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }


async def _collect(events: asyncio.Queue[TokenEvent], meta: _ResponseMeta) -> web.Response:
    texts: list[list[str]] = [[] for _ in range(meta.choices)]
    reasons: list[str | None] = [None] * meta.choices
    remaining = meta.choices
    while remaining:
        ev = await events.get()
        texts[ev.index].append(ev.text)
        if ev.finish_reason is not None:
            reasons[ev.index] = ev.finish_reason
            remaining -= 1
    generated = sum(len(t) for t in texts)
    choices: list[dict[str, Any]] = []
    for i in range(meta.choices):
        text = "".join(texts[i])
        routed = meta.routes[i](len(texts[i])) if meta.routes is not None else None
        # Every field vLLM 0.32.0 sends (tests/conformance/fixtures), null where the simulator has nothing to say.
        if meta.chat:
            message = {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None}
            message |= {"function_call": None, "reasoning": None}
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reasons[i],
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": routed,
                }
            )
        else:
            choices.append(
                {
                    "index": i,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": reasons[i],
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": routed,
                }
            )
    body: dict[str, Any] = {
        "id": meta.id,
        "object": meta.object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": f"vllm-{VERSION}",
        "usage": {**meta.usage(generated), "prompt_tokens_details": None, "completion_tokens_details": None},
    }
    if meta.chat:
        body |= {"prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None}
    body |= {"kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}
    return web.json_response(body)


async def _stream(request: web.Request, events: asyncio.Queue[TokenEvent], meta: _ResponseMeta) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    chunk_object = "chat.completion.chunk" if meta.chat else "text_completion"

    async def send(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> None:
        chunk: dict[str, Any] = {
            "id": meta.id,
            "object": chunk_object,
            "created": meta.created,
            "model": meta.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        await resp.write(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")

    if meta.chat:
        for i in range(meta.choices):
            await send(
                [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}],
                None,
            )
    try:
        await _stream_events(events, meta, send)
    except ConnectionResetError:
        log.debug("client closed the stream of %s", meta.id)
        return resp
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _stream_events(
    events: asyncio.Queue[TokenEvent],
    meta: _ResponseMeta,
    send: Callable[[list[dict[str, Any]], dict[str, int] | None], Awaitable[None]],
) -> None:
    remaining = meta.choices
    generated = 0
    while remaining:
        ev = await events.get()
        if ev.text:
            generated += 1
        if ev.finish_reason is not None:
            remaining -= 1
        if meta.chat:
            delta = {"content": ev.text} if ev.text else {}
            await send([{"index": ev.index, "delta": delta, "logprobs": None, "finish_reason": ev.finish_reason}], None)
        else:
            await send(
                [
                    {
                        "index": ev.index,
                        "text": ev.text,
                        "logprobs": None,
                        "finish_reason": ev.finish_reason,
                        "stop_reason": None,
                    }
                ],
                None,
            )
    if meta.include_usage:
        await send([], meta.usage(generated))


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions."""
    return await _generate(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    return await _generate(request, chat=True)


def _permission(created: int) -> dict[str, Any]:
    """The model_permission object vLLM lists with each model (OpenAI's legacy shape, fixed values)."""
    return {
        "id": f"modelperm-{uuid.uuid4().hex[:16]}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the served names, as vLLM lists them."""
    cfg = request.app[CONFIG_KEY]
    created = int(time.time())
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": cfg.model_arg,
            "parent": None,
            "max_model_len": cfg.max_model_len,
            "permission": [_permission(created)],
        }
        for name in cfg.served_model_names
    ]
    engine = request.app.get(ENGINE_KEY)
    for name, path in engine.lora.items() if engine is not None else ():
        data.append(
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": path,
                "parent": cfg.served_model_name,
                "max_model_len": None,
                "permission": [_permission(created)],
            }
        )
    return web.json_response({"object": "list", "data": data})


def _adapter_rank(cfg: EngineConfig, name: str, path: str) -> int:
    """The rank in the adapter's adapter_config.json; ApiError 404 when there is no readable adapter (vLLM's)."""
    local = Path(path)
    if cfg.models_root is not None and local.parts[:2] == ("/", "models"):
        local = Path(cfg.models_root, *local.parts[2:])
    try:
        return int(json.loads((local / "adapter_config.json").read_text()).get("r", 8))
    except (OSError, ValueError, TypeError):
        raise ApiError(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError") from None


async def load_lora_adapter(request: web.Request) -> web.Response:
    """POST /v1/load_lora_adapter {"lora_name", "lora_path"}: as vLLM's, 400 when loaded already, 404 when the
    path holds no adapter."""
    body = await _json_object(request)
    name, path = body.get("lora_name"), body.get("lora_path")
    if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
        raise bad_request("Both 'lora_name' and 'lora_path' must be provided.")
    engine = request.app[ENGINE_KEY]
    if name in engine.lora:
        raise ApiError(
            400,
            f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
            "set 'load_inplace' to True.",
            "InvalidUserInput",
        )
    cfg = request.app[CONFIG_KEY]
    rank = await asyncio.to_thread(_adapter_rank, cfg, name, path)
    if rank > cfg.max_lora_rank:
        raise bad_request(f"LoRA rank {rank} is greater than max_lora_rank {cfg.max_lora_rank}.")
    engine.lora[name] = path
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora_adapter(request: web.Request) -> web.Response:
    """POST /v1/unload_lora_adapter {"lora_name"}: as vLLM's, 404 for an adapter that is not loaded."""
    body = await _json_object(request)
    name = body.get("lora_name")
    engine = request.app[ENGINE_KEY]
    if not isinstance(name, str) or name not in engine.lora:
        raise ApiError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
    del engine.lora[name]
    return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


# health, metrics, admin


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 while the engine core lives, draining included; 503 once it died (vLLM's EngineDeadError)."""
    engine = request.app.get(ENGINE_KEY)
    return web.Response(status=503 if engine is not None and engine.dead else 200)


async def version(request: web.Request) -> web.Response:
    """GET /version."""
    return web.json_response({"version": VERSION})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition of this engine's registry."""
    engine = request.app.get(ENGINE_KEY)
    payload = engine.metrics.render() if engine is not None else request.app[TRAINER_KEY].render_metrics()
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def scale_elastic_ep(request: web.Request) -> web.Response:
    """POST /scale_elastic_ep {"new_data_parallel_size": n, "drain_timeout": s}, as vLLM 0.32.0 answers it."""
    engine = request.app[ENGINE_KEY]
    if request.content_type != "application/json":
        message = "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed"
        raise ApiError(400, message, "Bad Request")
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "Invalid JSON format", "Bad Request") from None
    if not isinstance(body, dict):
        # vLLM calls .get on whatever JSON came, and its generic handler reports the AttributeError.
        raise ApiError(500, f"'{type(body).__name__}' object has no attribute 'get'", "InternalServerError")
    size = body.get("new_data_parallel_size")
    drain_timeout = body.get("drain_timeout", 120)
    if size is None:
        raise ApiError(400, "new_data_parallel_size is required", "Bad Request")
    # JSON true: vLLM 0.32.0 was seen to reset the connection; the simulator refuses it like any non-integer.
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ApiError(400, "new_data_parallel_size must be a positive integer", "Bad Request")
    if not isinstance(drain_timeout, int) or drain_timeout <= 0:
        raise ApiError(400, "drain_timeout must be a positive integer", "Bad Request")
    try:
        await engine.scale_elastic_ep(size, drain_timeout)
    except TimeoutError:
        raise ApiError(
            408, f"Scale failed due to request drain timeout after {drain_timeout} seconds", "Request Timeout"
        ) from None
    except ElasticScaleRejected as exc:
        raise ApiError(400, str(exc), "Bad Request") from None
    except Exception as exc:
        log.error("Scale failed: %s", exc)
        raise ApiError(500, "Scale failed", "Internal Server Error") from None
    return web.json_response({"message": f"Scaled to {size} data parallel engines"})


async def is_scaling_elastic_ep(request: web.Request) -> web.Response:
    """POST /is_scaling_elastic_ep: false whenever it answers, since the 503 window covers this route too."""
    return web.json_response({"is_scaling_elastic_ep": request.app[ENGINE_KEY].scaling})


async def sglang_scale_elastic_ep(request: web.Request) -> web.Response:
    """SGLang 0.5.23's POST /scale_elastic_ep {"new_ep_size": n}: starts a scale-up and answers at once."""
    engine = request.app[ENGINE_KEY]
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return web.json_response({"error": f"Invalid JSON: {exc}"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "request body must be a JSON object"}, status=400)
    size = body.get("new_ep_size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return web.json_response({"error": "new_ep_size must be a positive integer"}, status=400)
    try:
        return web.json_response(engine.sglang_scale(size))
    except ElasticScaleFailed as exc:
        return web.json_response({"error": str(exc)}, status=404)
    except ElasticScaleBusy as exc:
        return web.json_response({"error": str(exc)}, status=409)
    except ElasticScaleRejected as exc:
        return web.json_response({"error": str(exc)}, status=400)


async def sglang_is_scaling(request: web.Request) -> web.Response:
    """SGLang 0.5.23's GET /is_scaling_elastic_ep: the scale state (404 when elastic EP is off)."""
    engine = request.app[ENGINE_KEY]
    if engine.elastic is None or not engine.cfg.enable_elastic_ep:
        return web.json_response({"error": "elastic EP is not enabled (--elastic-ep-backend)"}, status=404)
    return web.json_response(engine.sglang_state())


@web.middleware
async def _scaling_window(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # vLLM wraps its whole HTTP app: while a resize commits, every route (health and metrics too) answers 503.
    engine = request.app.get(ENGINE_KEY)
    if engine is not None and engine.scaling:
        return web.json_response({"error": "The model is currently scaling. Please try again later."}, status=503)
    return await handler(request)


def _routes_for(engine: SimEngine, prompt_tokens: int) -> Callable[[int], str]:
    def encode(generated: int) -> str:
        routes = engine.routed_experts(prompt_tokens + generated)
        assert routes is not None
        return _routed_experts_b64(routes)

    return encode


def _routed_experts_b64(routes: np.ndarray) -> str:
    """The array as vLLM sends it: the .npy bytes, base64-encoded."""
    buffer = io.BytesIO()
    np.save(buffer, routes, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def create_app(cfg: EngineConfig, clock: Clock | None = None) -> web.Application:
    """The aiohttp application of one engine (serving or trainer, by cfg.mode), with its own metrics registry.

    The engine object is reachable as app[ENGINE_KEY] (serving) or app[TRAINER_KEY] (trainer).
    """
    app = web.Application(middlewares=[_scaling_window, _errors])
    app[CONFIG_KEY] = cfg
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    if cfg.metric_names != "none":
        app.router.add_get("/metrics", metrics)
    if cfg.mode == "trainer":
        trainer = Trainer(cfg, clock)
        app[TRAINER_KEY] = trainer
        app.on_startup.append(lambda _: trainer.start())
        app.on_cleanup.append(lambda _: trainer.stop())
        return app
    engine = SimEngine(cfg, clock)
    app[ENGINE_KEY] = engine
    if cfg.enable_lora and cfg.runtime_lora_updating:
        # vLLM serves the runtime routes only with --enable-lora and this variable set.
        app.router.add_post("/v1/load_lora_adapter", load_lora_adapter)
        app.router.add_post("/v1/unload_lora_adapter", unload_lora_adapter)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    if cfg.speaks_sglang:
        app.router.add_post("/scale_elastic_ep", sglang_scale_elastic_ep)
        app.router.add_get("/is_scaling_elastic_ep", sglang_is_scaling)
    else:
        app.router.add_post("/scale_elastic_ep", scale_elastic_ep)
        app.router.add_post("/is_scaling_elastic_ep", is_scaling_elastic_ep)
    app.on_startup.append(lambda _: engine.start())
    app.on_cleanup.append(lambda _: engine.stop())
    return app


async def shutdown(app: web.Application) -> None:
    """What SIGTERM does to vLLM 0.32.0 (docs/engines.md). With `--shutdown-timeout N` > 0, new requests get 500
    while `/health` stays 200 and in-flight ones may finish for up to N seconds; whatever is left then, or
    everything at once with N = 0 (the default), ends with finish_reason "abort". The caller then stops serving."""
    trainer = app.get(TRAINER_KEY)
    if trainer is not None:
        # A trainer's SIGTERM: checkpoint now, then exit (docs/finetuning.md).
        await trainer.terminate()
        return
    engine = app.get(ENGINE_KEY)
    if engine is None:
        return
    timeout_s = app[CONFIG_KEY].shutdown_timeout_s
    if timeout_s > 0:
        engine.refuse_new_requests()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(engine.wait_idle(), timeout_s)
    await engine.stop()


async def serve(cfg: EngineConfig, clock: Clock | None = None, *, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT), then shut down as vLLM does (`shutdown()`)."""
    app = create_app(cfg, clock)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    log.info("simulated %s engine for %s on %s:%d", cfg.mode, cfg.model.name, cfg.host, cfg.port)
    try:
        await stop.wait()
        await shutdown(app)
    finally:
        await runner.cleanup()
