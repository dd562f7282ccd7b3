"""The /metrics the operator reads (adapters.engine_metrics, autoscaler.observation): names, types, labels,
buckets, and that they count one request exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.metrics_core import Metric

from adapters.engine_metrics import parse_vllm_metrics
from autoscaler.observation import (
    GENERATION_TOKENS,
    ITL,
    KV_CACHE,
    PROMPT_TOKENS,
    REQUEST_SUCCESS,
    RUNNING,
    TTFT,
    WAITING,
)
from tests.conformance.engines import Engine, RealEngineEnv, both, longest_stream, start_long
from tests.conformance.wire import family_of, recorded_metrics, scrape, value

pytestmark = pytest.mark.conformance

# What the operator reads, with the Prometheus type vLLM 0.32.0 gives each (the first name of each pair is current).
READ = {
    RUNNING: "gauge",
    WAITING: "gauge",
    KV_CACHE[0]: "gauge",
    PROMPT_TOKENS: "counter",
    GENERATION_TOKENS: "counter",
    REQUEST_SUCCESS: "counter",
    TTFT: "histogram",
    ITL[0]: "histogram",
}
HISTOGRAMS = [name for name, kind in READ.items() if kind == "histogram"]


def _bounds(fams: dict[str, Metric], name: str) -> list[str]:
    fam = family_of(fams, name)
    assert fam is not None, f"{name} is not exported"
    return [s.labels["le"] for s in fam.samples if s.name == f"{name}_bucket"]


@pytest.mark.parametrize("name", list(READ))
@both()
def test_every_metric_the_operator_reads_has_vllms_type_and_labels(engine: Engine, name: str) -> None:
    with engine.client() as c:
        fams = scrape(c)
    fam = family_of(fams, name)
    assert fam is not None, f"{name} is not exported"
    assert fam.type == READ[name]
    samples = [s for s in fam.samples if not s.name.endswith("_created")]
    assert samples
    for s in samples:
        assert s.labels.get("model_name") == engine.model
        assert s.labels.get("engine") == "0"


@both()
def test_request_success_has_a_series_for_every_finish_reason(engine: Engine) -> None:
    with engine.client() as c:
        fam = family_of(scrape(c), REQUEST_SUCCESS)
    assert fam is not None
    reasons = {s.labels["finished_reason"] for s in fam.samples if s.name == REQUEST_SUCCESS}
    assert reasons == {"stop", "length", "abort", "error", "repetition"}


@pytest.mark.parametrize("name", HISTOGRAMS)
@both()
def test_histogram_buckets_are_vllms(engine: Engine, name: str) -> None:
    with engine.client() as c:
        fams = scrape(c)
    assert _bounds(fams, name) == _bounds(recorded_metrics(), name)


@both()
def test_no_vllm_metric_that_vllm_does_not_export(engine: Engine) -> None:
    with engine.client() as c:
        fams = scrape(c)
    real = recorded_metrics()
    extra = sorted(name for name in fams if name.startswith("vllm:") and name not in real)
    assert extra == []


def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@both()
def test_one_request_is_counted_exactly(engine: Engine) -> None:
    labels = {"model_name": engine.model}
    with engine.client() as c:
        before = scrape(c)
        r = c.post(
            "/v1/completions",
            json={"model": engine.model, "prompt": "count me", "max_tokens": 7, "temperature": 0, "ignore_eos": True},
        )
        assert r.status_code == 200
        usage = r.json()["usage"]

        def delta(sample: str, **more: str) -> float:
            return value(scrape(c), sample, **labels, **more) - value(before, sample, **labels, **more)

        _until(lambda: delta(f"{REQUEST_SUCCESS}", finished_reason="length") >= 1)
        assert delta(REQUEST_SUCCESS, finished_reason="length") == 1
        assert delta(PROMPT_TOKENS) == usage["prompt_tokens"]
        assert delta(GENERATION_TOKENS) == 7
        assert delta(f"{TTFT}_count") == 1
        # One inter-token gap per token after the first.
        assert delta(f"{ITL[0]}_count") == 6


@both()
def test_the_operators_parser_reads_the_engine(engine: Engine) -> None:
    with engine.client() as c:
        c.post(
            "/v1/completions", json={"model": engine.model, "prompt": "parse me", "max_tokens": 3, "ignore_eos": True}
        )
        sample = parse_vllm_metrics(c.get("/metrics").text, "pod-0", 0.0, model=engine.model)
    assert sample.kv_cache_usage is not None
    assert sample.ttft is not None and sample.ttft.count >= 1
    assert sample.itl is not None and sample.itl.count >= 2
    assert sample.request_success >= 1
    assert sample.prompt_tokens > 0 and sample.generation_tokens >= 3


@both(param="kind")
def test_running_counts_requests_in_flight_and_returns_to_zero(kind: str, request: pytest.FixtureRequest) -> None:
    # Its own engine with a long context: two streams as long as it allows, so that the core is on both for seconds
    # however fast the machine; the client then walks away from them, which aborts them (vLLM and the simulator).
    env: RealEngineEnv | None = request.getfixturevalue("real_engine_env") if kind == "vllm" else None
    engine = start_long(kind, env, f"{kind}-running")
    try:
        tokens = longest_stream(engine)
        statuses: list[int] = []
        started = [threading.Event() for _ in range(2)]
        leave = threading.Event()

        def long_stream(first: threading.Event) -> None:
            body = {"model": engine.model, "prompt": "go on", "max_tokens": tokens, "ignore_eos": True, "stream": True}
            with (
                httpx.Client(base_url=engine.base_url, timeout=300) as c,
                c.stream("POST", "/v1/completions", json=body) as r,
            ):
                statuses.append(r.status_code)
                for _ in r.iter_lines():
                    first.set()
                    if leave.is_set():
                        break
            first.set()

        threads = [threading.Thread(target=long_stream, args=(e,), daemon=True) for e in started]
        for t in threads:
            t.start()
        with engine.client() as c:
            assert all(e.wait(120) for e in started), "no first chunk"
            seen: list[tuple[float, float]] = []

            def both_running() -> bool:
                fams = scrape(c)
                labels = {"model_name": engine.model}
                seen.append((value(fams, RUNNING, **labels), value(fams, KV_CACHE[0], **labels)))
                return seen[-1][0] == 2

            _until(both_running, timeout_s=120)  # a scrape can wait seconds on a loaded API server
            assert all(t.is_alive() for t in threads), "a stream of the longest length ended before it was counted"
            assert seen[-1][1] > 0, "two requests in flight hold KV cache"
            leave.set()
            for t in threads:
                t.join(60)
            _until(lambda: value(scrape(c), RUNNING, model_name=engine.model) == 0, timeout_s=120)
            assert value(scrape(c), KV_CACHE[0], model_name=engine.model) == 0
        assert statuses == [200, 200]
    finally:
        engine.stop(grace_s=5)
