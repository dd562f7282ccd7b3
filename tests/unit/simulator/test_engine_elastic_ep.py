"""The simulated engine resizes expert parallelism the way vLLM 0.32.0 and SGLang 0.5.23 do (docs/engines.md)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Awaitable
from typing import TypeVar

import httpx
import numpy as np
import pytest

from catalogue.elastic import resize_timings
from simulator.engine import EngineConfigError, parse_args
from simulator.engine.config import DRAIN_ENV
from simulator.engine.server import ENGINE_KEY
from tests.unit.simulator.engine_support import engine_argv, serve_engine

T = TypeVar("T")
MOE = "deepseek-v2-lite"
SCALING_BODY = {"error": "The model is currently scaling. Please try again later."}


class StepClock:
    """Virtual time that moves only when the test says so; sleepers wake once it has passed their instant."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, t: float) -> None:
        while self.t < t:  # noqa: ASYNC110 - the test moves time by steps, so polling is the simplest wait
            await asyncio.sleep(0.0005)

    def advance(self, seconds: float) -> None:
        self.t += seconds


async def run_until(clock: StepClock, work: Awaitable[T], step_s: float = 0.05, limit_s: float = 600.0) -> T:
    """Await work while virtual time advances step_s per turn of the loop (a fast, deterministic clock)."""
    task = asyncio.ensure_future(work)
    start = clock.now()
    while not task.done():
        assert clock.now() - start < limit_s, "virtual time ran out before the work finished"
        clock.advance(step_s)
        await asyncio.sleep(0.001)
    return task.result()


async def advance_to(clock: StepClock, t: float) -> None:
    while clock.now() < t:
        clock.advance(min(0.05, t - clock.now()))
        await asyncio.sleep(0.001)


def elastic_argv(width: int = 2, *extra: str) -> list[str]:
    return engine_argv(
        MOE, "H100", 1000, "--expert-parallel", str(width), "--enable-eplb", "--enable-elastic-ep", *extra
    )


async def widen(clock: StepClock, http: httpx.AsyncClient, width: int) -> None:
    """Scale up first: a scale-down needs the slots that only a wider start (or redundant experts) gives."""
    r = await run_until(clock, http.post("/scale_elastic_ep", json={"new_data_parallel_size": width}), step_s=0.5)
    assert r.status_code == 200


async def complete(http: httpx.AsyncClient, max_tokens: int = 2) -> httpx.Response:
    return await http.post("/v1/completions", json={"model": MOE, "prompt": "hello", "max_tokens": max_tokens})


class TestVllmRequestValidation:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({}, "new_data_parallel_size is required"),
            ({"new_data_parallel_size": 0}, "new_data_parallel_size must be a positive integer"),
            ({"new_data_parallel_size": "4"}, "new_data_parallel_size must be a positive integer"),
            ({"new_data_parallel_size": True}, "new_data_parallel_size must be a positive integer"),
            ({"new_data_parallel_size": 4, "drain_timeout": 0}, "drain_timeout must be a positive integer"),
            ({"new_data_parallel_size": 4, "drain_timeout": 1.5}, "drain_timeout must be a positive integer"),
        ],
    )
    async def test_bad_bodies_get_400_naming_the_field(self, body: dict[str, object], message: str) -> None:
        async with serve_engine(elastic_argv(2, "--elastic-ep-max-dp-size", "4")) as e, e.http() as http:
            r = await http.post("/scale_elastic_ep", json=body)
        assert r.status_code == 400
        assert r.json()["error"] == {"message": message, "type": "Bad Request", "param": None, "code": 400}

    async def test_invalid_json_is_400_and_a_non_json_content_type_too(self) -> None:
        async with serve_engine(elastic_argv()) as e, e.http() as http:
            broken = await http.post(
                "/scale_elastic_ep", content=b"{not json", headers={"content-type": "application/json"}
            )
            plain = await http.post("/scale_elastic_ep", content=b'{"new_data_parallel_size": 2}')
        assert broken.status_code == 400 and broken.json()["error"]["message"] == "Invalid JSON format"
        assert plain.status_code == 400 and "Only 'application/json' is allowed" in plain.json()["error"]["message"]

    async def test_the_current_size_is_200_without_doing_anything(self) -> None:
        async with serve_engine(elastic_argv(2)) as e, e.http() as http:
            r = await http.post("/scale_elastic_ep", json={"new_data_parallel_size": 2})
            assert e.app[ENGINE_KEY].elastic.resizes == 0
        assert r.status_code == 200 and r.json() == {"message": "Scaled to 2 data parallel engines"}

    async def test_without_elastic_ep_another_size_is_500_scale_failed(self) -> None:
        # As measured on the real CPU vLLM (issue 13): the current size 200, any other 500.
        argv = engine_argv(MOE, "H100", 1000, "--expert-parallel", "2")
        async with serve_engine(argv) as e, e.http() as http:
            same = await http.post("/scale_elastic_ep", json={"new_data_parallel_size": 2})
            other = await http.post("/scale_elastic_ep", json={"new_data_parallel_size": 4})
        assert same.status_code == 200
        assert other.status_code == 500 and other.json()["error"]["message"] == "Scale failed"

    async def test_beyond_the_max_dp_size_is_400_with_the_limit(self) -> None:
        async with serve_engine(elastic_argv(2)) as e, e.http() as http:
            r = await http.post("/scale_elastic_ep", json={"new_data_parallel_size": 4})
        assert r.status_code == 400 and "--elastic-ep-max-dp-size is 2" in r.json()["error"]["message"]

    async def test_too_few_ranks_for_the_experts_is_400_with_the_minimum(self) -> None:
        # 64 experts at 32 slots per rank: one rank cannot hold them.
        async with serve_engine(elastic_argv(2)) as e, e.http() as http:
            r = await http.post("/scale_elastic_ep", json={"new_data_parallel_size": 1})
        assert r.status_code == 400 and r.json()["error"]["message"].endswith("minimum is 2")

    async def test_is_scaling_is_false_when_idle(self) -> None:
        async with serve_engine(elastic_argv()) as e, e.http() as http:
            r = await http.post("/is_scaling_elastic_ep")
        assert r.status_code == 200 and r.json() == {"is_scaling_elastic_ep": False}


class TestVllmResize:
    async def test_scale_up_serves_while_preparing_then_answers_503_to_everything_for_the_commit(self) -> None:
        clock = StepClock()
        async with serve_engine(elastic_argv(2, "--elastic-ep-max-dp-size", "4"), clock) as e, e.http() as http:
            engine = e.app[ENGINE_KEY]
            timings = resize_timings(engine.cfg.model, 2, 4, 32, moved_expert_bytes_per_rank=0.0)
            scale = asyncio.ensure_future(http.post("/scale_elastic_ep", json={"new_data_parallel_size": 4}))
            await advance_to(clock, timings.prepare_s / 2)
            served = await run_until(clock, complete(http))
            assert served.status_code == 200, "requests are served while joiners start and pull weights"
            assert (await http.post("/is_scaling_elastic_ep")).json() == {"is_scaling_elastic_ep": False}
            await advance_to(clock, timings.prepare_s + 0.5)
            for method, path in (("POST", "/v1/completions"), ("GET", "/health"), ("GET", "/metrics")):
                r = await http.request(method, path, json={"model": MOE, "prompt": "x", "max_tokens": 1})
                assert (r.status_code, r.json()) == (503, SCALING_BODY), path
            assert (await http.post("/is_scaling_elastic_ep")).status_code == 503
            await advance_to(clock, timings.total_s - 0.5)
            assert (await http.get("/health")).status_code == 503, "the window lasts the whole commit"
            done = await run_until(clock, scale)
            assert (await http.get("/health")).status_code == 200
        assert done.status_code == 200 and done.json() == {"message": "Scaled to 4 data parallel engines"}
        assert engine.elastic.width == 4 and engine.perf.expert_parallel == 4
        assert clock.now() == pytest.approx(timings.total_s, abs=0.5)  # within a few clock steps
        # Joined ranks keep 32 slots each: 128 slots for 64 experts, so the hot ones are replicated.
        held = {e for slots in engine.elastic.layout.ranks for e in slots}
        assert engine.elastic.layout.width == 4 and held == set(range(64))

    async def test_scale_down_without_drain_aborts_what_runs_on_the_retired_ranks(self) -> None:
        clock = StepClock()
        async with serve_engine(elastic_argv(2, "--elastic-ep-max-dp-size", "4"), clock) as e, e.http() as http:
            await widen(clock, http, 4)
            long = [asyncio.ensure_future(complete(http, max_tokens=4000)) for _ in range(4)]
            await advance_to(clock, clock.now() + 0.5)
            r = await run_until(clock, http.post("/scale_elastic_ep", json={"new_data_parallel_size": 2}))
            results = await run_until(clock, asyncio.gather(*long))
        assert r.status_code == 200
        reasons = sorted(res.json()["choices"][0]["finish_reason"] for res in results)
        assert reasons == ["abort", "abort", "length", "length"], "vLLM pauses retiring ranks with 'abort'"

    async def test_scale_down_with_drain_fails_no_request(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(DRAIN_ENV, "1")
        clock = StepClock()
        async with serve_engine(elastic_argv(2, "--elastic-ep-max-dp-size", "4"), clock) as e, e.http() as http:
            await widen(clock, http, 4)
            long = [asyncio.ensure_future(complete(http, max_tokens=200)) for _ in range(4)]
            await advance_to(clock, clock.now() + 0.5)
            r = await run_until(clock, http.post("/scale_elastic_ep", json={"new_data_parallel_size": 2}))
            results = await run_until(clock, asyncio.gather(*long))
            assert e.app[ENGINE_KEY].elastic.width == 2
        assert r.status_code == 200
        assert [res.json()["choices"][0]["finish_reason"] for res in results] == ["length"] * 4

    async def test_drain_timeout_is_408_and_the_width_stays(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(DRAIN_ENV, "1")
        clock = StepClock()
        async with serve_engine(elastic_argv(2, "--elastic-ep-max-dp-size", "4"), clock) as e, e.http() as http:
            await widen(clock, http, 4)
            long = asyncio.ensure_future(complete(http, max_tokens=60000))  # minutes of decoding
            await advance_to(clock, clock.now() + 0.5)
            body = {"new_data_parallel_size": 2, "drain_timeout": 3}
            r = await run_until(clock, http.post("/scale_elastic_ep", json=body))
            assert (await http.get("/health")).status_code == 200, "a failed drain ends the 503 window"
            assert e.app[ENGINE_KEY].elastic.width == 4
            long.cancel()
        assert r.status_code == 408
        assert r.json()["error"]["message"] == "Scale failed due to request drain timeout after 3 seconds"


class TestSglangVariant:
    def argv(self, *extra: str) -> list[str]:
        return engine_argv(MOE, "H100", 1000, "--expert-parallel", "2", "--metric-names", "sglang", *extra)

    async def test_scale_up_is_accepted_at_once_and_completes_in_the_background(self) -> None:
        clock = StepClock()
        argv = self.argv("--elastic-ep-backend", "mooncake", "--elastic-ep-max-dp-size", "4")
        async with serve_engine(argv, clock) as e, e.http() as http:
            r = await http.post("/scale_elastic_ep", json={"new_ep_size": 4})
            state = (await http.get("/is_scaling_elastic_ep")).json()
            busy = await http.post("/scale_elastic_ep", json={"new_ep_size": 4})
            served = await run_until(clock, complete(http))
            await advance_to(clock, 60)
            done = (await http.get("/is_scaling_elastic_ep")).json()
        assert r.status_code == 200 and r.json() == {
            "message": "Scaling initiated from 2 to 4",
            "old_ep_size": 2,
            "new_ep_size": 4,
        }
        assert state["is_scaling_elastic_ep"] is True and state["pending_ep_size"] == 4
        assert busy.status_code == 409
        assert served.status_code == 200, "SGLang keeps serving while the cohort joins"
        assert done == {
            "is_scaling_elastic_ep": False,
            "effective_ep_size": 4,
            "pending_ep_size": None,
            "scale_phase": "serving_expanded",
            "last_error": None,
        }

    async def test_scale_down_is_refused(self) -> None:
        async with serve_engine(self.argv("--elastic-ep-backend", "mooncake")) as e, e.http() as http:
            r = await http.post("/scale_elastic_ep", json={"new_ep_size": 1})
        assert r.status_code == 400 and "must be greater than current" in r.json()["error"]

    async def test_without_a_backend_both_routes_are_404(self) -> None:
        async with serve_engine(self.argv()) as e, e.http() as http:
            scale = await http.post("/scale_elastic_ep", json={"new_ep_size": 4})
            state = await http.get("/is_scaling_elastic_ep")
        assert scale.status_code == 404 and state.status_code == 404


class TestRoutedExperts:
    async def test_responses_carry_each_tokens_experts_as_vllm_encodes_them(self) -> None:
        argv = elastic_argv(2, "--enable-return-routed-experts")
        async with serve_engine(argv) as e, e.http() as http:
            r = await http.post("/v1/completions", json={"model": MOE, "prompt": "hello world", "max_tokens": 50})
            share = e.app[ENGINE_KEY].expert_share()
        choice = r.json()["choices"][0]
        routes = np.load(io.BytesIO(base64.b64decode(choice["routed_experts"])), allow_pickle=False)
        prompt = r.json()["usage"]["prompt_tokens"]
        assert routes.shape == (prompt + 50, 27, 6)
        assert routes.min() >= 0 and routes.max() < 64
        assert all(len(set(row)) == 6 for row in routes.reshape(-1, 6).tolist()), "top-k experts are distinct"
        counts = np.bincount(routes.ravel(), minlength=64)
        hot, cold = int(np.argmax(share)), int(np.argmin(share))
        assert counts[hot] > counts[cold], "the simulated router favours the popular experts"

    async def test_off_by_default(self) -> None:
        async with serve_engine(elastic_argv(2)) as e, e.http() as http:
            r = await complete(http)
        assert r.json()["choices"][0]["routed_experts"] is None


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--expert-parallel", "2", "--enable-elastic-ep"], "--enable-elastic-ep"),
        (["--expert-parallel", "3", "--enable-eplb", "--enable-elastic-ep"], "--expert-parallel"),
        (["--expert-parallel", "2", "--elastic-ep-max-dp-size", "1"], "--elastic-ep-max-dp-size"),
    ],
)
def test_elastic_flags_are_checked_at_start(extra: list[str], flag: str) -> None:
    with pytest.raises(EngineConfigError, match=flag):
        parse_args(engine_argv(MOE, "H100", 1000, *extra))


def test_a_dense_model_cannot_enable_elastic_ep() -> None:
    with pytest.raises(EngineConfigError, match="dense"):
        parse_args(engine_argv("llama-3-8b", "H100", 1000, "--enable-eplb", "--enable-elastic-ep"))
