"""A dead engine core as vLLM 0.32.0 reports it: /health answers 503 (EngineDeadError) and new requests 500.

The real engine's core process is killed (SIGKILL, as the OOM killer would); the simulated one dies by its fault
flag (--fail-after). VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1 keeps vLLM's API server up to be looked at; without it,
vLLM's watchdog exits the process within 5 s of the death (the container then restarts)."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.conformance.engines import (
    SERVED,
    Engine,
    RealEngineEnv,
    both,
    descendants,
    process_title,
    start_simulated,
    start_vllm,
)

pytestmark = pytest.mark.conformance

DEATH_TIMEOUT_S = 60


def _kill_the_engine_core(engine: Engine) -> None:
    children = {pid: process_title(pid) for pid in descendants(engine.proc.pid)}
    cores = [pid for pid, title in children.items() if "EngineCore" in title]
    assert cores, f"no EngineCore process below vllm serve: {children}"
    for pid in cores:
        os.kill(pid, signal.SIGKILL)


def _health_after_death(engine: Engine) -> list[int]:
    """/health's answers, polled until it stops answering 200 (or the timeout)."""
    seen: list[int] = []
    deadline = time.monotonic() + DEATH_TIMEOUT_S
    with httpx.Client(base_url=engine.base_url, timeout=10) as c:
        while time.monotonic() < deadline:
            seen.append(c.get("/health").status_code)
            if seen[-1] != 200:
                break
            time.sleep(0.2)
    return seen


@both(param="kind")
def test_a_dead_engine_core_answers_health_503_and_requests_500(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "vllm":
        env: RealEngineEnv = request.getfixturevalue("real_engine_env")
        engine = start_vllm(env, "vllm-dead", extra_env={"VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1"})
    else:
        engine = start_simulated("simulated-dead", "--fail-after", "5")
    try:
        with httpx.Client(base_url=engine.base_url, timeout=30) as c:
            assert c.get("/health").status_code == 200
        if kind == "vllm":
            _kill_the_engine_core(engine)
        health = _health_after_death(engine)
        with httpx.Client(base_url=engine.base_url, timeout=30) as c:
            refused = c.post("/v1/completions", json={"model": SERVED, "prompt": "anyone?", "max_tokens": 2})
    finally:
        engine.stop(grace_s=10)
    assert health[-1] == 503, f"/health answered {health} after the engine core died"
    assert refused.status_code == 500, refused.text
    assert refused.json()["error"]["code"] == 500
