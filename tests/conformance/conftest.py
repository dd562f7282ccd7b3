"""The conformance tier: one set of checks run against the real vLLM (CPU build, tiny local model) and the
simulated engine. Where they differ, the simulator is wrong; its known mismatches are strict xfails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.engines import (
    Engine,
    RealEngineEnv,
    absent,
    find_real_engine_env,
    start_simulated,
    start_vllm,
)


@pytest.fixture(scope="session")
def real_engine_env() -> RealEngineEnv:
    found = find_real_engine_env()
    if isinstance(found, str):
        absent(found)
    return found


@pytest.fixture(scope="session")
def vllm_engine(real_engine_env: RealEngineEnv) -> Iterator[Engine]:
    engine = start_vllm(real_engine_env, "vllm-session")
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def simulated_engine() -> Iterator[Engine]:
    engine = start_simulated("simulated-session")
    yield engine
    engine.stop()


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Engine:
    """The engine named by the test's `engine` parameter ("vllm" or "simulated"), started once per session."""
    fixture = {"vllm": "vllm_engine", "simulated": "simulated_engine"}[request.param]
    return request.getfixturevalue(fixture)
