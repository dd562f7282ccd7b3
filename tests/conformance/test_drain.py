"""SIGTERM as vLLM 0.32.0 handles it. With `--shutdown-timeout N`: requests in flight finish, new ones are refused
with 500 while /health stays 200, then the process exits. Without it (0, the default): requests in flight are
aborted and the process exits at once. Each check starts its own engine, since it ends it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conformance.engines import SERVED, Engine, RealEngineEnv, both, start_simulated, start_vllm
from tests.conformance.wire import DONE, sse_events

pytestmark = pytest.mark.conformance

CONTEXT = 2048  # the tiny model's longest context: long streams give the checks time to look inside a drain
STREAMS = 4
TOKENS = 1800
SHUTDOWN_TIMEOUT_S = 60


@dataclass
class Stream:
    """One long streaming completion read on its own thread."""

    engine: Engine
    status: int | None = None
    events: list[dict[str, Any] | str] = field(default_factory=list)
    error: str | None = None
    first_chunk: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        body = {
            "model": SERVED,
            "prompt": "drain me",
            "max_tokens": TOKENS,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            with (
                httpx.Client(base_url=self.engine.base_url, timeout=300) as c,
                c.stream("POST", "/v1/completions", json=body) as r,
            ):
                self.status = r.status_code
                for line in r.iter_lines():
                    if line:
                        self.events.extend(sse_events([line]))
                        self.first_chunk.set()
        except httpx.HTTPError as err:
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.first_chunk.set()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)

    def finish_reasons(self) -> list[str]:
        return [
            ch["finish_reason"]
            for e in self.events
            if isinstance(e, dict)
            for ch in e.get("choices", [])
            if ch.get("finish_reason")
        ]

    def completion_tokens(self) -> int | None:
        usage = [e["usage"] for e in self.events if isinstance(e, dict) and e.get("usage")]
        return int(usage[-1]["completion_tokens"]) if usage else None


def _start(kind: str, request: pytest.FixtureRequest, name: str, *extra: str) -> Engine:
    if kind == "vllm":
        env: RealEngineEnv = request.getfixturevalue("real_engine_env")
        return start_vllm(env, name, *extra, max_model_len=CONTEXT)
    return start_simulated(name, *extra, max_model_len=CONTEXT)


def _streams_in_flight(engine: Engine) -> list[Stream]:
    streams = [Stream(engine) for _ in range(STREAMS)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.first_chunk.wait(300), "no first chunk"
        assert s.status == 200 and s.error is None, s.error
    return streams


@both(param="kind")
def test_with_a_shutdown_timeout_in_flight_requests_finish_and_new_ones_get_500(
    kind: str, request: pytest.FixtureRequest
) -> None:
    engine = _start(kind, request, f"{kind}-drain", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S))
    try:
        streams = _streams_in_flight(engine)
        sigterm = time.monotonic()
        engine.terminate()
        time.sleep(1.0)
        with httpx.Client(base_url=engine.base_url, timeout=30) as c:
            health = c.get("/health").status_code
            new = c.post("/v1/completions", json={"model": SERVED, "prompt": "too late", "max_tokens": 2})
        still_streaming = sum(s.running for s in streams)
        for s in streams:
            s.join(SHUTDOWN_TIMEOUT_S + 30)
        engine.proc.wait(timeout=SHUTDOWN_TIMEOUT_S + 30)
        exited_after = time.monotonic() - sigterm
    finally:
        engine.stop(grace_s=5)
    assert still_streaming > 0, "the streams ended before the drain could be looked at: lengthen them"
    assert health == 200
    assert new.status_code == 500
    for s in streams:
        assert s.error is None, s.error
        assert s.finish_reasons() == ["length"]
        assert s.completion_tokens() == TOKENS
        assert s.events[-1] == DONE
    assert exited_after < SHUTDOWN_TIMEOUT_S + 30


@both(param="kind")
def test_without_a_shutdown_timeout_in_flight_requests_are_aborted(kind: str, request: pytest.FixtureRequest) -> None:
    engine = _start(kind, request, f"{kind}-abort")
    try:
        streams = _streams_in_flight(engine)
        sigterm = time.monotonic()
        engine.terminate()
        for s in streams:
            s.join(60)
        engine.proc.wait(timeout=60)
        exited_after = time.monotonic() - sigterm
    finally:
        engine.stop(grace_s=5)
    for s in streams:
        assert s.finish_reasons() == ["abort"], (s.error, s.finish_reasons())
        tokens = s.completion_tokens()
        assert tokens is not None and tokens < TOKENS
    assert exited_after < 30
