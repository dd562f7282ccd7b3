"""SIGTERM as vLLM 0.32.0 handles it. With `--shutdown-timeout N`: requests in flight finish, new ones are refused
with 500 while /health stays 200, then the process exits. Without it (0, the default): requests in flight fail
(aborted, or with vLLM under load left hanging until SIGKILL). Each check starts its own engine, since it ends it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conformance.engines import SERVED, Engine, RealEngineEnv, both, start_long, tokens_lasting
from tests.conformance.wire import DONE, sse_events

pytestmark = pytest.mark.conformance

STREAMS = 4
STREAM_SECONDS = 8.0  # how long the streams should last: time for the checks to look inside a drain
SHUTDOWN_TIMEOUT_S = 60
ABORT_WITHIN_S = 30.0  # without a shutdown timeout, streams end and the process exits well within this


@dataclass
class Stream:
    """One long streaming completion read on its own thread."""

    engine: Engine
    tokens: int
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
            "max_tokens": self.tokens,
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
    env: RealEngineEnv | None = request.getfixturevalue("real_engine_env") if kind == "vllm" else None
    return start_long(kind, env, name, *extra)


def _streams_in_flight(engine: Engine) -> list[Stream]:
    # Sized to last STREAM_SECONDS on this machine, after the engine's warm-up, so that the streams start together
    # and SIGTERM finds them all in flight whether the machine is idle or loaded.
    tokens = tokens_lasting(engine, STREAM_SECONDS)
    streams = [Stream(engine, tokens) for _ in range(STREAMS)]
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
        time.sleep(0.3)  # for the signal to reach the server; the streams still have seconds of work
        still_streaming = sum(s.running for s in streams)
        with httpx.Client(base_url=engine.base_url, timeout=30) as c:
            health = c.get("/health").status_code
            # Until the server has taken the signal in, a new request is still served: ask again for a moment.
            for _ in range(15):
                new = c.post("/v1/completions", json={"model": SERVED, "prompt": "too late", "max_tokens": 2})
                if new.status_code != 200:
                    break
                time.sleep(0.2)
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
        assert s.completion_tokens() == s.tokens
        assert s.events[-1] == DONE
    assert exited_after < SHUTDOWN_TIMEOUT_S + 30


@pytest.mark.timeout(600)  # a vLLM start, the 30 s wait for the aborts and, when they never come, a SIGKILL
@both(param="kind")
def test_without_a_shutdown_timeout_in_flight_requests_are_aborted(kind: str, request: pytest.FixtureRequest) -> None:
    """No request in flight completes. vLLM 0.32.0 ends them in one of two ways: its engine core aborts them
    (`finish_reason: "abort"`) and the process exits within seconds; or, under load, its process manager
    force-kills the core in the same instant it sends it SIGTERM (`timeout=0s`), the aborts never arrive, and the
    HTTP server waits on the open streams until the kubelet's SIGKILL at the end of the grace period cuts them (2
    of 3 runs on a loaded 2-core machine). The simulated engine models the first; a pod is lost either way."""
    engine = _start(kind, request, f"{kind}-abort")
    hung = False
    try:
        streams = _streams_in_flight(engine)
        sigterm = time.monotonic()
        engine.terminate()
        for s in streams:
            s.join(max(0.0, ABORT_WITHIN_S - (time.monotonic() - sigterm)))
        hung = any(s.running for s in streams)
        if hung:
            print(f"[conformance] {kind}: streams open {ABORT_WITHIN_S:.0f} s after SIGTERM; SIGKILL, as a kubelet")
            engine.kill()
            for s in streams:
                s.join(30)
        engine.proc.wait(timeout=ABORT_WITHIN_S)
        exited_after = time.monotonic() - sigterm
    finally:
        engine.stop(grace_s=5)
    for s in streams:
        assert not s.running
        tokens = s.completion_tokens()
        assert "length" not in s.finish_reasons() and (tokens is None or tokens < s.tokens), s.finish_reasons()
        if hung:
            assert s.error is not None, "a stream cut by SIGKILL ends with a transport error"
        else:
            assert s.finish_reasons() == ["abort"], (s.error, s.finish_reasons())
    if kind == "simulated":
        assert not hung, "the simulated engine aborts in-flight requests and exits at once"
    if not hung:
        assert exited_after < ABORT_WITHIN_S
