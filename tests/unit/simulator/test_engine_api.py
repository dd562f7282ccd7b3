"""The simulated engine over real HTTP: OpenAI client compatibility, vLLM errors and metrics, admin endpoints."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from catalogue.power import PowerLimitError
from simulator.engine import ENGINE_KEY
from simulator.engine.metrics import REQUEST_LATENCY_BUCKETS, TOKEN_LATENCY_BUCKETS, TTFT_BUCKETS
from simulator.engine.server import shutdown
from tests.unit.simulator.engine_support import Served, engine_argv, sample, serve_engine

MODEL = "llama-3-8b"


class TestOpenAIProtocol:
    async def test_completion_generates_exactly_max_tokens(self) -> None:
        async with serve_engine(engine_argv()) as e:
            r = await e.openai().completions.create(model=MODEL, prompt=[1000] * 300, max_tokens=17)
        assert r.object == "text_completion" and r.model == MODEL
        assert r.choices[0].finish_reason == "length" and r.choices[0].text
        assert r.usage is not None
        assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (300, 17, 317)

    async def test_chat_completion(self) -> None:
        async with serve_engine(engine_argv()) as e:
            r = await e.openai().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=6
            )
        assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
        assert r.usage is not None and r.usage.completion_tokens == 6 and r.usage.prompt_tokens > 0

    async def test_streamed_completion_sends_one_chunk_per_token(self) -> None:
        async with serve_engine(engine_argv()) as e:
            stream = await e.openai().completions.create(
                model=MODEL, prompt="Once upon a time", max_tokens=12, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            chunks = [c async for c in stream]
        token_chunks = [c for c in chunks if c.choices]
        assert len(token_chunks) == 12 and all(c.choices[0].text for c in token_chunks)
        assert [c.choices[0].finish_reason for c in token_chunks][-2:] == [None, "length"]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12

    async def test_streamed_chat_starts_with_the_role(self) -> None:
        async with serve_engine(engine_argv()) as e:
            stream = await e.openai().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
            )
            chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        contents = [c.choices[0].delta.content for c in chunks[1:]]
        assert len(contents) == 4 and all(contents)
        assert chunks[-1].choices[0].finish_reason == "length"

    async def test_batched_prompts_and_n_give_indexed_choices(self) -> None:
        async with serve_engine(engine_argv()) as e:
            r = await e.openai().completions.create(model=MODEL, prompt=["a b", "c d e"], n=2, max_tokens=3)
        assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
        assert r.usage is not None and r.usage.completion_tokens == 12

    async def test_models_lists_served_names(self) -> None:
        argv = engine_argv("meta-llama/Meta-Llama-3-8B", "H100", 1000, "--served-model-name", "chat", "chat-v2")
        async with serve_engine(argv) as e:
            models = await e.openai().models.list()
            r = await e.openai().completions.create(model="chat-v2", prompt="x", max_tokens=1)
        assert [m.id for m in models.data] == ["chat", "chat-v2"]
        assert r.model == "chat-v2"


class TestErrors:
    async def error(self, e: Served, body: object, path: str = "/v1/completions") -> tuple[int, dict[str, object]]:
        """Status and the body's `error` object (vLLM >= 0.10.1 nests it; nothing else is at the top level)."""
        async with e.http() as client:
            if isinstance(body, bytes):
                resp = await client.post(path, content=body, headers={"Content-Type": "application/json"})
            else:
                resp = await client.post(path, json=body)
        body_json = resp.json()
        assert set(body_json) == {"error"}, body_json
        return resp.status_code, body_json["error"]

    @pytest.mark.parametrize(
        ("body", "fragment", "param"),
        [
            ({"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens must be at least 1", "max_tokens"),
            ({"model": MODEL, "prompt": "x", "max_tokens": 9000}, "cannot be greater than max_model_len", "max_tokens"),
            ({"model": MODEL, "prompt": "x", "n": 0}, "n must be at least 1", "n"),
            ({"model": MODEL, "prompt": "x", "temperature": -1}, "temperature", "temperature"),
            ({"model": MODEL}, "prompt", None),
            ({"model": MODEL, "prompt": [1] * 9000, "max_tokens": 9}, "maximum context length is 8192", "input_tokens"),
            ({"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}}, "stream=True", None),
            (b"{not json", "Invalid JSON", None),
            (b"[1, 2]", "JSON object", None),
        ],
    )
    async def test_malformed_requests_get_vllm_400(self, body: object, fragment: str, param: str | None) -> None:
        async with serve_engine(engine_argv()) as e:
            status, err = await self.error(e, body)
        assert status == 400
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "BadRequestError" and err["code"] == 400
        assert err["param"] == param and fragment in str(err["message"])

    async def test_bad_chat_messages_get_400(self) -> None:
        async with serve_engine(engine_argv()) as e:
            status, err = await self.error(e, {"model": MODEL, "messages": [{"role": "robot"}]}, "/v1/chat/completions")
        assert status == 400 and "role" in str(err["message"])

    async def test_unknown_model_gets_vllm_404(self) -> None:
        async with serve_engine(engine_argv()) as e:
            status, err = await self.error(e, {"model": "gpt-9", "prompt": "x"})
            with pytest.raises(openai.NotFoundError):
                await e.openai().completions.create(model="gpt-9", prompt="x", max_tokens=1)
        assert status == 404
        assert err == {
            "message": "The model `gpt-9` does not exist.", "type": "NotFoundError", "param": "model", "code": 404,
        }  # fmt: skip

    async def test_max_tokens_past_the_context_stops_at_the_context(self) -> None:
        async with serve_engine(engine_argv(MODEL, "H100", 1000, "--max-model-len", "512")) as e:
            r = await e.openai().completions.create(model=MODEL, prompt=[3] * 500, max_tokens=100)
        assert r.choices[0].finish_reason == "length"
        assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (500, 12)


class TestMetrics:
    async def test_names_types_labels_and_buckets_match_vllm(self) -> None:
        async with serve_engine(engine_argv()) as e:
            await e.openai().completions.create(model=MODEL, prompt=[7] * 100, max_tokens=5)
            families = await e.metrics()
        expected = {
            "vllm:num_requests_running": "gauge",
            "vllm:num_requests_waiting": "gauge",
            "vllm:kv_cache_usage_perc": "gauge",
            "vllm:prompt_tokens": "counter",
            "vllm:generation_tokens": "counter",
            "vllm:request_success": "counter",
            "vllm:num_preemptions": "counter",
            "vllm:time_to_first_token_seconds": "histogram",
            "vllm:inter_token_latency_seconds": "histogram",
            "vllm:e2e_request_latency_seconds": "histogram",
        }
        for name, kind in expected.items():
            assert families[name].type == kind, name
        # Older names vLLM 0.32.0 no longer exports: the operator must not come to depend on them.
        assert "vllm:gpu_cache_usage_perc" not in families
        assert "vllm:time_per_output_token_seconds" not in families
        reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples}
        assert reasons == {"stop", "length", "abort", "error", "repetition"}
        labels = {"model_name": MODEL, "engine": "0"}
        assert sample(families, "vllm:prompt_tokens_total", **labels) == 100
        assert sample(families, "vllm:generation_tokens_total", **labels) == 5
        assert sample(families, "vllm:request_success_total", finished_reason="length", **labels) == 1
        assert sample(families, "vllm:time_to_first_token_seconds_count", **labels) == 1
        assert sample(families, "vllm:inter_token_latency_seconds_count", **labels) == 4
        assert sample(families, "vllm:e2e_request_latency_seconds_count", **labels) == 1

        def bounds(name: str) -> tuple[float, ...]:
            les = [float(s.labels["le"]) for s in families[name].samples if s.name == name + "_bucket"]
            return tuple(le for le in les if le != float("inf"))

        assert bounds("vllm:time_to_first_token_seconds") == TTFT_BUCKETS
        assert bounds("vllm:inter_token_latency_seconds") == TOKEN_LATENCY_BUCKETS
        assert bounds("vllm:e2e_request_latency_seconds") == REQUEST_LATENCY_BUCKETS
        assert TTFT_BUCKETS[:4] == (0.001, 0.005, 0.01, 0.02) and REQUEST_LATENCY_BUCKETS[0] == 0.3

    async def test_sglang_names_replace_vllms_and_count_the_same(self) -> None:
        async with serve_engine(engine_argv(MODEL, "H100", 1000, "--metric-names", "sglang")) as e:
            await e.openai().completions.create(model=MODEL, prompt=[7] * 100, max_tokens=5)
            families = await e.metrics()
        assert not [name for name in families if name.startswith("vllm:")]
        kinds = {n: f.type for n, f in families.items() if n.startswith("sglang:") and not n.endswith("_created")}
        assert kinds == {
            "sglang:num_running_reqs": "gauge", "sglang:num_queue_reqs": "gauge", "sglang:token_usage": "gauge",
            "sglang:prompt_tokens": "counter", "sglang:generation_tokens": "counter",
            "sglang:num_requests": "counter", "sglang:time_to_first_token_seconds": "histogram",
            "sglang:inter_token_latency_seconds": "histogram",
        }  # fmt: skip
        assert sample(families, "sglang:prompt_tokens_total", model_name=MODEL) == 100
        assert sample(families, "sglang:generation_tokens_total") == 5
        assert sample(families, "sglang:num_requests_total") == 1
        assert sample(families, "sglang:inter_token_latency_seconds_count") == 4

    async def test_ttft_is_the_modelled_prefill_time(self) -> None:
        async with serve_engine(engine_argv()) as e:
            await e.openai().completions.create(model=MODEL, prompt=[5] * 4000, max_tokens=1)
            families = await e.metrics()
        ttft = sample(families, "vllm:time_to_first_token_seconds_sum")
        assert ttft == pytest.approx(e.cfg.perf_model().prefill_seconds(4000), rel=1e-6)

    async def test_each_engine_has_its_own_registry(self) -> None:
        async with serve_engine(engine_argv()) as a, serve_engine(engine_argv()) as b:
            await a.openai().completions.create(model=MODEL, prompt="x", max_tokens=3)
            assert sample(await b.metrics(), "vllm:generation_tokens_total") == 0
            assert sample(await a.metrics(), "vllm:generation_tokens_total") == 3


async def test_sigterm_with_a_shutdown_timeout_finishes_inflight_and_refuses_new_requests_with_500() -> None:
    # 2,000 tokens at ~6.5 ms each is 13 virtual seconds: ~130 ms of wall time at 100x, ample to look mid-stream.
    async with serve_engine(engine_argv(MODEL, "H100", 100, "--shutdown-timeout", "30")) as e:
        client = e.openai()
        stream = await client.completions.create(model=MODEL, prompt="x", max_tokens=2000, stream=True)
        received = [await stream.__anext__()]
        stopping = asyncio.create_task(shutdown(e.app))  # what SIGTERM runs
        async with e.http() as http:
            await asyncio.sleep(0.01)
            refused = await http.post("/v1/completions", json={"model": MODEL, "prompt": "y"})
            assert refused.status_code == 500
            assert refused.json() == {
                "error": {
                    "message": "cannot schedule new futures after shutdown", "type": "InternalServerError",
                    "param": None, "code": 500,
                }
            }  # fmt: skip
            assert (await http.get("/health")).status_code == 200, "vLLM's /health stays green during a drain"
            assert not stopping.done()
            received += [c async for c in stream]
        await asyncio.wait_for(stopping, 5)
    assert len(received) == 2000 and received[-1].choices[0].finish_reason == "length"


async def test_sigterm_without_a_shutdown_timeout_aborts_inflight_requests() -> None:
    async with serve_engine(engine_argv(MODEL, "H100", 100)) as e:
        stream = await e.openai().completions.create(model=MODEL, prompt="x", max_tokens=2000, stream=True)
        received = [await stream.__anext__()]
        await asyncio.wait_for(shutdown(e.app), 1)
        received += [c async for c in stream]
    assert received[-1].choices[0].finish_reason == "abort" and len(received) < 2000


async def test_the_shutdown_timeout_bounds_the_drain() -> None:
    async with serve_engine(engine_argv(MODEL, "H100", 1, "--shutdown-timeout", "1")) as e:
        stream = await e.openai().completions.create(model=MODEL, prompt="x", max_tokens=2000, stream=True)
        received = [await stream.__anext__()]
        await asyncio.wait_for(shutdown(e.app), 3)
        received += [c async for c in stream]
    assert received[-1].choices[0].finish_reason == "abort"


async def test_client_disconnect_aborts_and_frees_the_sequence() -> None:
    async with serve_engine(engine_argv(MODEL, "H100", 100)) as e:
        async with (
            e.http() as http,
            http.stream(
                "POST", "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5000, "stream": True}
            ) as resp,
        ):
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    break
        for _ in range(200):
            families = await e.metrics()
            if sample(families, "vllm:request_success_total", finished_reason="abort") == 1:
                break
            await asyncio.sleep(0.01)
        assert sample(families, "vllm:request_success_total", finished_reason="abort") == 1
        assert sample(families, "vllm:num_requests_running") == 0


class TestPower:
    async def test_limit_is_reported_validated_and_reset(self) -> None:
        # The fleet's simulated NVML sets the limit in-process, as the board would; the engine has no endpoint.
        async with serve_engine(engine_argv()) as e:
            engine = e.app[ENGINE_KEY]
            state = engine.power_state()
            assert (state["limit_w"], state["min_limit_w"], state["max_limit_w"]) == (700, 200, 700)
            assert state["draw_w"] == 70  # idle H100
            assert engine.set_power_limit(350)["limit_w"] == 350
            with pytest.raises(PowerLimitError, match="200-700 W"):
                engine.set_power_limit(100)
            assert engine.set_power_limit(None)["limit_w"] == 700

    async def test_cap_slows_decode_as_the_curve_says_and_prefill_more(self) -> None:
        async def timings(e: Served) -> tuple[float, float]:
            before = await e.metrics()
            await e.openai().completions.create(model=MODEL, prompt=[3] * 3000, max_tokens=41)
            after = await e.metrics()

            def delta(name: str) -> float:
                return sample(after, name) - sample(before, name)

            itl = delta("vllm:inter_token_latency_seconds_sum") / delta("vllm:inter_token_latency_seconds_count")
            return delta("vllm:time_to_first_token_seconds_sum"), itl

        async with serve_engine(engine_argv()) as e:
            ttft_full, itl_full = await timings(e)
            e.app[ENGINE_KEY].set_power_limit(300)
            ttft_capped, itl_capped = await timings(e)
        perf = e.cfg.perf_model()
        capped = perf.with_power_limit(300)
        expected_itl = capped.decode_step_seconds(1, 3020) / perf.decode_step_seconds(1, 3020)
        assert itl_capped / itl_full == pytest.approx(expected_itl, rel=0.01)
        assert ttft_capped / ttft_full > itl_capped / itl_full > 1.0


async def test_same_seed_same_outputs_and_virtual_timings() -> None:
    requests: list[tuple[str | list[int], int]] = [([11] * 200, 8), ("Tell me a story", 5), ([2] * 1500, 3)]

    async def run(seed: int) -> tuple[list[str], float, float]:
        argv = engine_argv(MODEL, "H100", 1000, "--seed", str(seed))
        async with serve_engine(argv) as e:
            texts = []
            for prompt, n in requests:
                r = await e.openai().completions.create(model=MODEL, prompt=prompt, max_tokens=n)
                texts.append(r.choices[0].text)
            families = await e.metrics()
        return (
            texts,
            sample(families, "vllm:e2e_request_latency_seconds_sum"),
            sample(families, "vllm:time_to_first_token_seconds_sum"),
        )

    first, second, other = await run(7), await run(7), await run(8)
    assert first[0] == second[0]
    assert first[1] == pytest.approx(second[1], rel=1e-9) and first[2] == pytest.approx(second[2], rel=1e-9)
    assert first[0] != other[0]


async def test_health_version_and_unknown_routes() -> None:
    async with serve_engine(engine_argv()) as e, e.http() as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/ready")).status_code == 404, "vLLM has no /ready; readiness probes use /health"
        assert (await http.post("/admin/drain")).status_code == 404, "no invented drain endpoint"
        assert "version" in (await http.get("/version")).json()
        assert (await http.get("/nope")).status_code == 404
        assert (await http.get("/admin/power")).status_code == 404, "power limits are NVML's, not the engine's"


async def test_a_dead_engine_core_turns_health_503_and_refuses_requests_with_500() -> None:
    """vLLM answers /health 503 once its engine core died (EngineDeadError) and 500 to new work; in-flight
    streams end. The fault is injected with --fail-after (virtual seconds after start)."""
    # At 10x, the core dies 0.5 s of wall time after start; the stream's 2,000 tokens would take ~1.3 s.
    async with serve_engine(engine_argv(MODEL, "H100", 10, "--fail-after", "5")) as e, e.http() as http:
        stream = await e.openai().completions.create(model=MODEL, prompt="x", max_tokens=2000, stream=True)
        received = [c async for c in stream]
        assert received[-1].choices[0].finish_reason == "abort" and len(received) < 2000
        assert (await http.get("/health")).status_code == 503
        refused = await http.post("/v1/completions", json={"model": MODEL, "prompt": "y"})
        assert refused.status_code == 500
        assert refused.json()["error"]["message"].startswith("EngineCore encountered an issue")
        assert (await http.get("/metrics")).status_code == 200, "vLLM's /metrics answers whatever the core's state"


async def test_health_stays_200_through_a_drain_until_the_core_dies() -> None:
    async with serve_engine(engine_argv(MODEL, "H100", 100, "--shutdown-timeout", "30")) as e, e.http() as http:
        stream = await e.openai().completions.create(model=MODEL, prompt="x", max_tokens=2000, stream=True)
        await stream.__anext__()
        stopping = asyncio.create_task(shutdown(e.app))
        await asyncio.sleep(0.01)
        assert (await http.get("/health")).status_code == 200
        await e.app[ENGINE_KEY].die()
        assert (await http.get("/health")).status_code == 503
        await asyncio.wait_for(stopping, 5)


async def test_metric_names_none_serves_no_metrics_as_sglang_without_enable_metrics() -> None:
    async with serve_engine(engine_argv(MODEL, "H100", 100, "--metric-names", "none")) as e, e.http() as http:
        missing = await http.get("/metrics")
        assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
        assert (await http.get("/health")).status_code == 200


async def test_lora_routes_answer_with_vllms_status_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = tmp_path / "tide"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    argv = engine_argv("llama-3-8b", "H100", 1000, "--enable-lora", "--lora-modules", f"at-start={adapter}")
    async with serve_engine(argv) as e, e.http() as http:
        load = {"lora_name": "tide", "lora_path": str(adapter)}
        assert (await http.post("/v1/load_lora_adapter", json=load)).status_code == 200
        # The bodies the real vLLM 0.32.0 answers (tests/realengine/test_trainer.py prints them).
        again = await http.post("/v1/load_lora_adapter", json=load)
        assert again.status_code == 400 and again.json()["error"]["type"] == "InvalidUserInput"
        assert "has already been loaded" in again.json()["error"]["message"]
        bad = {"lora_name": "nope", "lora_path": str(tmp_path / "missing")}
        missing = await http.post("/v1/load_lora_adapter", json=bad)
        assert missing.status_code == 404 and missing.json()["error"]["message"] == (
            f"Loading lora nope failed: No adapter found for {tmp_path / 'missing'}"
        )
        models = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
        assert models["tide"]["parent"] == "llama-3-8b" and models["at-start"]["root"] == str(adapter)
        answer = await http.post("/v1/completions", json={"model": "tide", "prompt": "hi", "max_tokens": 3})
        assert answer.status_code == 200 and answer.json()["model"] == "tide"
        assert (await http.post("/v1/unload_lora_adapter", json={"lora_name": "tide"})).status_code == 200
        assert (await http.post("/v1/unload_lora_adapter", json={"lora_name": "tide"})).status_code == 404
    monkeypatch.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING")
    async with serve_engine(argv) as e, e.http() as http:
        assert (await http.post("/v1/load_lora_adapter", json=load)).status_code == 404  # no runtime updating
