"""vLLM metrics: parsing exposition text, counter resets, histogram quantiles, aggregation and fetching."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from adapters.engine_metrics import (
    MetricsParseError,
    ModelNotServedError,
    PodScraper,
    PodTarget,
    PrometheusQuerySource,
    ServiceMetricsCollector,
    parse_promql_scalar,
    parse_vllm_metrics,
    target_url,
)
from autoscaler.observation import (
    Histogram,
    PodSample,
    ScrapeResult,
    aggregate_scrapes,
    build_promql_queries,
    counter_delta,
    histogram_delta,
    histogram_quantile,
    merge_histograms,
)
from autoscaler.types import SLO, ScalingBounds, ScrapeFailure
from bench.autoscaler.baselines import KPALike
from tests.kube import ROOT
from tests.unit.autoscaler.vllm_text import MODEL, exposition

INF = math.inf


class TestParse:
    def test_reads_gauges_counters_and_histograms(self) -> None:
        s = parse_vllm_metrics(exposition(), "pod-a", 10.0)
        assert (s.pod, s.t) == ("pod-a", 10.0)
        assert (s.running, s.waiting, s.kv_cache_usage) == (3.0, 1.0, 0.25)
        assert (s.prompt_tokens, s.generation_tokens) == (50_000.0, 15_000.0)
        assert s.request_success == 100.0  # summed over finished_reason
        assert s.ttft is not None and s.itl is not None
        assert s.ttft.count == 100.0 and s.ttft.bounds[-1] == INF and s.ttft.sum == 25.0
        assert s.itl.count == 10_000.0

    def test_sums_engines_and_averages_kv_cache(self) -> None:
        second = exposition(engine="1", kv=0.6, running=5.0)
        text = exposition(engine="0", kv=0.2) + "".join(
            line + "\n" for line in second.splitlines() if not line.startswith("#")
        )
        s = parse_vllm_metrics(text, "pod-a", 0.0)
        assert s.running == 8.0
        assert s.kv_cache_usage == pytest.approx(0.4)
        assert s.request_success == 200.0
        assert s.ttft is not None and s.ttft.count == 200.0

    def test_understands_v0_metric_names(self) -> None:
        s = parse_vllm_metrics(exposition(v0_names=True, kv=0.7), "pod-a", 0.0)
        assert s.kv_cache_usage == 0.7
        assert s.itl is not None and s.itl.count == 10_000.0

    def test_model_filter(self) -> None:
        assert parse_vllm_metrics(exposition(), "p", 0.0, model=MODEL).request_success == 100.0
        with pytest.raises(ModelNotServedError, match=f"'other-model'.*model_name {MODEL}"):
            parse_vllm_metrics(exposition(), "p", 0.0, model="other-model")

    def test_a_wrong_model_filter_on_real_vllm_metrics_names_the_models_served_instead_of_reading_zeros(self) -> None:
        """vLLM 0.32.0's /metrics (recorded by the conformance tier) holds engine-wide series without model_name
        (vllm:cache_config_info): a filter for a model the engine does not serve must not read them as an idle
        engine."""
        text = (ROOT / "tests/conformance/fixtures/vllm-0.32.0/metrics.txt").read_text()
        assert parse_vllm_metrics(text, "p", 0.0, model="<model>").request_success == 4.0
        with pytest.raises(ModelNotServedError) as err:
            parse_vllm_metrics(text, "p", 0.0, model="llama-3-8b")
        assert str(err.value) == "pod p: no metrics for model 'llama-3-8b'; the engine reports model_name <model>"
        assert isinstance(err.value, MetricsParseError)  # a failed scrape of that pod, never a sample of zeros

    def test_rejects_garbage_and_pages_without_vllm_metrics(self) -> None:
        with pytest.raises(MetricsParseError):
            parse_vllm_metrics("vllm:num_requests_running{engine=0 1\n", "p", 0.0)
        with pytest.raises(MetricsParseError, match="no vllm"):
            parse_vllm_metrics("# TYPE up gauge\nup 1\n", "p", 0.0)


class TestCountersAndHistograms:
    def test_counter_delta_handles_reset(self) -> None:
        assert counter_delta(100.0, 130.0) == 30.0
        assert counter_delta(100.0, 7.0) == 7.0  # restarted: everything since the restart counts

    def test_quantile_interpolates_like_prometheus(self) -> None:
        h = Histogram((0.1, 0.5, 1.0, INF), (10.0, 60.0, 100.0, 100.0))
        assert histogram_quantile(0.5, h) == pytest.approx(0.1 + 0.4 * 40 / 50)
        assert histogram_quantile(0.95, h) == pytest.approx(0.5 + 0.5 * 35 / 40)
        assert histogram_quantile(0.05, h) == pytest.approx(0.05)  # first bucket starts at zero

    def test_quantile_in_the_inf_bucket_is_the_top_finite_bound(self) -> None:
        h = Histogram((0.1, 1.0, INF), (0.0, 10.0, 100.0))
        assert histogram_quantile(0.95, h) == 1.0

    def test_empty_histogram_has_no_quantile(self) -> None:
        assert histogram_quantile(0.5, Histogram((1.0, INF), (0.0, 0.0))) is None
        assert histogram_quantile(0.5, None) is None

    def test_delta_and_reset(self) -> None:
        before = Histogram((0.1, 1.0, INF), (5.0, 10.0, 10.0), 3.0)
        after = Histogram((0.1, 1.0, INF), (5.0, 30.0, 32.0), 20.0)
        d = histogram_delta(before, after)
        assert d is not None and d.cumulative == (0.0, 20.0, 22.0) and d.sum == 17.0
        restarted = Histogram((0.1, 1.0, INF), (1.0, 2.0, 2.0), 0.5)
        assert histogram_delta(after, restarted) == restarted

    def test_merge_on_union_of_bounds(self) -> None:
        a = Histogram((0.1, 1.0, INF), (1.0, 4.0, 4.0))
        b = Histogram((0.5, INF), (2.0, 6.0))
        m = merge_histograms([a, b, None])
        assert m is not None
        assert m.bounds == (0.1, 0.5, 1.0, INF)
        assert m.cumulative == (1.0, 3.0, 6.0, 10.0)


def _sample(
    pod: str,
    t: float,
    requests: float,
    prompt: float = 0.0,
    *,
    ttft: Histogram | None = None,
    running: float = 0.0,
    waiting: float = 0.0,
    kv_cache_usage: float | None = None,
) -> PodSample:
    return PodSample(
        pod,
        t,
        running=running,
        waiting=waiting,
        kv_cache_usage=kv_cache_usage,
        prompt_tokens=prompt,
        generation_tokens=prompt / 4,
        request_success=requests,
        ttft=ttft,
    )


class TestAggregate:
    def test_rates_and_quantiles_across_pods_and_scrapes(self) -> None:
        h0 = Histogram((0.5, 1.0, INF), (0.0, 0.0, 0.0))
        h1 = Histogram((0.5, 1.0, INF), (50.0, 100.0, 100.0))
        prev = ScrapeResult(0.0, {"a": _sample("a", 0.0, 100, 1000, ttft=h0), "b": _sample("b", 0.0, 50, 500, ttft=h0)})
        cur = ScrapeResult(
            30.0,
            {
                "a": _sample("a", 30.0, 160, 7000, ttft=h1, running=2.0, waiting=1.0, kv_cache_usage=0.2),
                "b": _sample("b", 30.0, 80, 3500, ttft=h1, running=4.0, waiting=0.0, kv_cache_usage=0.4),
            },
        )
        o = aggregate_scrapes("ns/svc", prev, cur, replicas=2, ready_replicas=2)
        assert not o.stale and o.now == 30.0
        assert o.request_rate == pytest.approx(90 / 30)
        assert o.prompt_token_rate == pytest.approx(9000 / 30)
        assert o.generation_token_rate == pytest.approx(9000 / 4 / 30)
        assert (o.running, o.queue_length) == (6.0, 1.0)
        assert o.kv_cache_usage == pytest.approx(0.3)
        assert o.ttft_p50_s == pytest.approx(0.5)
        assert o.ttft_p95_s == pytest.approx(0.5 + 0.5 * 90 / 100)

    def test_pod_restart_between_scrapes(self) -> None:
        prev = ScrapeResult(0.0, {"a": _sample("a", 0.0, 1000)})
        cur = ScrapeResult(30.0, {"a": _sample("a", 30.0, 60)})  # restarted and served 60 since
        o = aggregate_scrapes("s", prev, cur, replicas=1, ready_replicas=1)
        assert o.request_rate == pytest.approx(2.0)

    def test_new_pod_counts_from_zero(self) -> None:
        prev = ScrapeResult(0.0, {"a": _sample("a", 0.0, 100)})
        cur = ScrapeResult(30.0, {"a": _sample("a", 30.0, 130), "b": _sample("b", 30.0, 30)})
        o = aggregate_scrapes("s", prev, cur, replicas=2, ready_replicas=2)
        assert o.request_rate == pytest.approx(2.0)

    def test_failed_pod_is_extrapolated_and_counted(self) -> None:
        prev = ScrapeResult(0.0, {p: _sample(p, 0.0, 0) for p in "abcd"})
        cur = ScrapeResult(30.0, {p: _sample(p, 30.0, 30, running=1.0) for p in "abc"}, {"d": "ConnectTimeout"})
        o = aggregate_scrapes("s", prev, cur, replicas=4, ready_replicas=4)
        assert not o.stale
        assert o.request_rate == pytest.approx(4.0)  # 3 req/s from 3 of 4 pods
        assert o.running == pytest.approx(4.0)

    def test_stale_without_previous_scrape_or_when_most_pods_fail(self) -> None:
        cur = ScrapeResult(30.0, {"a": _sample("a", 30.0, 30)})
        assert aggregate_scrapes("s", None, cur, replicas=1, ready_replicas=1).stale
        prev = ScrapeResult(0.0, {p: _sample(p, 0.0, 0) for p in "abc"})
        bad = ScrapeResult(30.0, {"a": _sample("a", 30.0, 30)}, {"b": "x", "c": "y"})
        assert aggregate_scrapes("s", prev, bad, replicas=3, ready_replicas=3).stale
        nothing = ScrapeResult(30.0, {}, {"a": "x"})
        assert aggregate_scrapes("s", prev, nothing, replicas=1, ready_replicas=1).stale

    def test_zero_pods_at_zero_replicas_is_fresh_zero_demand(self) -> None:
        o = aggregate_scrapes("s", None, ScrapeResult(30.0), replicas=0, ready_replicas=0)
        assert not o.stale and o.request_rate == 0.0


class TestTargets:
    def test_templates(self) -> None:
        t = PodTarget("p", pod_ip="10.0.0.7", port=8000, engine_url="http://engine.local:9000/")
        assert target_url("http://{podIP}:{port}/metrics", t) == "http://10.0.0.7:8000/metrics"
        assert target_url("{engineURL}/metrics", t) == "http://engine.local:9000/metrics"
        with pytest.raises(ValueError, match="no IP"):
            target_url("http://{podIP}:{port}/metrics", PodTarget("q"))


class TestScraper:
    async def test_bounded_concurrency_timeouts_and_failures(self) -> None:
        in_flight = 0
        peak = 0

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            host = request.url.host
            if host == "10.0.0.98":
                raise httpx.ReadTimeout("timed out", request=request)
            if host == "10.0.0.99":
                return httpx.Response(503, text="unavailable")
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return httpx.Response(200, text=exposition())

        targets = [PodTarget(f"p{i}", pod_ip=f"10.0.0.{i}") for i in range(10)]
        targets += [PodTarget("slow", pod_ip="10.0.0.98"), PodTarget("sick", pod_ip="10.0.0.99"), PodTarget("new")]
        clock = iter(range(1000)).__next__
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            scraper = PodScraper(client, lambda: float(clock()), concurrency=3)
            result = await scraper.scrape(targets)
        assert peak <= 3
        assert len(result.samples) == 10
        assert set(result.failures) == {"slow", "sick", "new"}
        assert "ReadTimeout" in str(result.failures["slow"]) and result.failures["slow"].status is None
        assert "no IP" in str(result.failures["new"]) and result.failures["new"].url is None
        sick = ScrapeFailure("http://10.0.0.99:8000/metrics", 503, "HTTP 503 Service Unavailable")
        assert result.failures["sick"] == sick
        assert (scraper.stats.scrapes, scraper.stats.failures) == (13, 3)

    @pytest.mark.parametrize(
        ("status", "body", "detail"),
        [
            (404, '{"detail":"Not Found"}', "HTTP 404 Not Found"),  # SGLang without --enable-metrics
            (500, "Internal Server Error", "HTTP 500 Internal Server Error"),
            (200, "<html>a proxy's login page</html>", "unparseable"),
            (200, "# TYPE up gauge\nup 1\n", "no vllm: or sglang: metrics"),
        ],
    )
    async def test_an_error_status_or_a_page_without_engine_metrics_is_a_failure_naming_url_and_status(
        self, status: int, body: str, detail: str
    ) -> None:
        """Never a sample of zeros: the autoscaler would read an idle service and scale it in."""

        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(status, text=body)

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            result = await PodScraper(client, lambda: 1.0).scrape([PodTarget("chat-0", pod_ip="10.0.0.7")])
        assert not result.samples
        failure = result.failures["chat-0"]
        assert (failure.url, failure.status) == ("http://10.0.0.7:8000/metrics", status)
        assert detail in failure.detail
        assert str(failure).startswith("GET http://10.0.0.7:8000/metrics")

    async def test_collector_turns_two_scrapes_into_rates(self) -> None:
        pages = iter([exposition(success_stop=100, prompt=0), exposition(success_stop=160, prompt=30_000)])

        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, text=next(pages))

        now = [0.0]
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            collector = ServiceMetricsCollector(PodScraper(client, lambda: now[0]))
            target = [PodTarget("p", pod_ip="10.0.0.1")]
            first = await collector.observe("ns/s", target, replicas=1, ready_replicas=1)
            now[0] = 30.0
            second = await collector.observe("ns/s", target, replicas=1, ready_replicas=1)
        assert first.stale
        assert not second.stale
        assert second.request_rate == pytest.approx(2.0)
        assert second.prompt_token_rate == pytest.approx(1000.0)


@pytest.fixture
def metrics_server() -> Iterator[str]:
    """A real HTTP server on localhost serving a vLLM /metrics page."""
    page = exposition().encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_scrapes_a_real_http_server(metrics_server: str) -> None:
    host, port = metrics_server.split(":")
    async with httpx.AsyncClient() as client:
        scraper = PodScraper(client, lambda: 5.0, timeout_s=2.0)
        result = await scraper.scrape(
            [PodTarget("live", pod_ip=host, port=int(port)), PodTarget("gone", pod_ip=host, port=1)]
        )
    assert result.samples["live"].request_success == 100.0
    assert "gone" in result.failures


class TestPrometheusMode:
    def test_queries_name_the_vllm_metrics(self) -> None:
        q = build_promql_queries('namespace="ns",service="s"', "2m")
        assert q["request_rate"] == 'sum(rate(vllm:request_success_total{namespace="ns",service="s"}[2m]))'
        assert "histogram_quantile(0.95" in q["ttft_p95_s"]
        assert "vllm:time_to_first_token_seconds_bucket" in q["ttft_p95_s"]

    def test_parse_scalar(self) -> None:
        ok = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "2.5"]}]}}
        assert parse_promql_scalar(ok) == 2.5
        assert parse_promql_scalar({"status": "success", "data": {"result": []}}) is None
        nan = {"status": "success", "data": {"result": [{"metric": {}, "value": [1, "NaN"]}]}}
        assert parse_promql_scalar(nan) is None
        assert parse_promql_scalar({"status": "error"}) is None

    async def test_observation_from_prometheus(self) -> None:
        answers = {
            "count(": "2",
            "vllm:request_success_total": "3.0",
            "vllm:prompt_tokens_total": "1500",
            "vllm:generation_tokens_total": "450",
            "time_to_first_token": "0.4",
        }

        def handler(request: httpx.Request) -> httpx.Response:
            query = request.url.params["query"]
            value = next((v for k, v in answers.items() if k in query), None)
            result = [] if value is None else [{"metric": {}, "value": [0, value]}]
            return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            source = PrometheusQuerySource(client, "http://prometheus:9090", lambda: 42.0)
            o = await source.observe("ns/svc", replicas=2, ready_replicas=2)
        assert o.service == "ns/svc" and o.now == 42.0 and not o.stale
        assert (o.request_rate, o.prompt_token_rate, o.generation_token_rate) == (3.0, 1500.0, 450.0)
        assert o.ttft_p95_s == 0.4 and o.itl_p95_s is None

    async def test_prometheus_down_is_stale(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            source = PrometheusQuerySource(client, "http://prometheus:9090", lambda: 1.0)
            o = await source.observe("ns/svc", replicas=2, ready_replicas=2)
        assert o.stale
        assert source.stats.failures == len(build_promql_queries("x"))


def test_parses_the_simulated_engines_exposition() -> None:
    # The simulated engine must be indistinguishable from vLLM to the autoscaler (design principle 2).
    engine_metrics = pytest.importorskip("simulator.engine.metrics")
    m = engine_metrics.EngineMetrics("llama", 4096)
    m.set_scheduler_state(3, 2, 0.4)
    m.prompt_tokens.inc(1000)
    m.success["stop"].inc(5)
    m.success["length"].inc(1)
    for v in (0.05, 0.2, 0.3, 1.2):
        m.ttft.observe(v)
    s = parse_vllm_metrics(m.render().decode(), "sim-0", 1.0)
    assert (s.running, s.waiting, s.kv_cache_usage) == (3.0, 2.0, 0.4)
    assert (s.prompt_tokens, s.request_success) == (1000.0, 6.0)
    assert s.ttft is not None and s.ttft.count == 4.0
    assert histogram_quantile(0.5, s.ttft) == pytest.approx(0.25)


SGLANG_TEXT = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 4.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 2.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 0.35
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{engine_type="unified",is_streaming="true",model_name="m"} 700.0
sglang:prompt_tokens_total{engine_type="unified",is_streaming="false",model_name="m"} 300.0
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{engine_type="unified",is_streaming="true",model_name="m"} 2000.0
# HELP sglang:num_requests_total Number of requests processed.
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{engine_type="unified",is_streaming="true",model_name="m"} 9.0
sglang:num_requests_total{engine_type="unified",is_streaming="false",model_name="m"} 1.0
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{engine_type="unified",is_streaming="true",le="0.1",model_name="m"} 6.0
sglang:time_to_first_token_seconds_bucket{engine_type="unified",is_streaming="true",le="0.2",model_name="m"} 10.0
sglang:time_to_first_token_seconds_bucket{engine_type="unified",is_streaming="true",le="+Inf",model_name="m"} 10.0
sglang:time_to_first_token_seconds_count{engine_type="unified",is_streaming="true",model_name="m"} 10.0
sglang:time_to_first_token_seconds_sum{engine_type="unified",is_streaming="true",model_name="m"} 0.9
# HELP sglang:inter_token_latency_seconds Histogram of inter-token latency in seconds.
# TYPE sglang:inter_token_latency_seconds histogram
sglang:inter_token_latency_seconds_bucket{engine_type="unified",le="0.01",model_name="m"} 1500.0
sglang:inter_token_latency_seconds_bucket{engine_type="unified",le="+Inf",model_name="m"} 1990.0
sglang:inter_token_latency_seconds_count{engine_type="unified",model_name="m"} 1990.0
sglang:inter_token_latency_seconds_sum{engine_type="unified",model_name="m"} 19.0
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 0.5
"""


def test_reads_sglangs_names_into_the_same_sample() -> None:
    s = parse_vllm_metrics(SGLANG_TEXT, "sgl-0", 2.0, model="m")
    assert (s.running, s.waiting, s.kv_cache_usage) == (4.0, 2.0, 0.35)
    assert (s.prompt_tokens, s.generation_tokens) == (1000.0, 2000.0)  # summed over is_streaming
    assert s.request_success == 10.0
    assert s.ttft is not None and (s.ttft.count, s.ttft.sum) == (10.0, 0.9)
    assert histogram_quantile(0.5, s.ttft) == pytest.approx(0.0833, abs=1e-3)
    assert s.itl is not None and s.itl.count == 1990.0


def test_sglang_without_enable_metrics_is_not_read_as_an_idle_engine() -> None:
    with pytest.raises(MetricsParseError, match="no vllm: or sglang: metrics"):
        parse_vllm_metrics("# nothing here\n", "sgl-0", 0.0)


@pytest.mark.parametrize("names_of", ["vllm", "sglang"])
def test_parses_the_simulated_engines_exposition_under_either_engines_names(names_of: str) -> None:
    engine_metrics = pytest.importorskip("simulator.engine.metrics")
    m = engine_metrics.EngineMetrics("llama", 4096, names_of=names_of)
    m.set_scheduler_state(3, 2, 0.4)
    m.prompt_tokens.inc(1000)
    m.success["length"].inc(2)
    m.ttft.observe(0.3)
    text = m.render().decode()
    assert {line.split(":")[0] for line in text.splitlines() if not line.startswith("#")} == {names_of}
    s = parse_vllm_metrics(text, "sim-0", 1.0, model="llama")
    assert (s.running, s.waiting, s.kv_cache_usage) == (3.0, 2.0, 0.4)
    assert (s.prompt_tokens, s.request_success) == (1000.0, 2.0)
    assert s.ttft is not None and s.ttft.count == 1.0


async def test_an_sglang_service_under_load_is_scaled_out_from_its_own_metrics() -> None:
    # Two SGLang pods, each with 40 requests in flight, seen twice 30 s apart: the autoscaler reads them as it
    # reads vLLM pods and asks for more replicas (40 x 2 in flight / (32 x 0.7) per replica -> 4).
    def page(finished: float) -> str:
        return SGLANG_TEXT.replace("} 4.0", "} 40.0").replace("} 9.0", f"}} {finished}")

    pages = {0.0: page(9.0), 30.0: page(69.0)}
    now = [0.0]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=pages[now[0]])

    policy = KPALike(concurrency_per_replica=32.0, target_utilization=0.7)
    targets = [PodTarget("sgl-0", pod_ip="10.0.0.1"), PodTarget("sgl-1", pod_ip="10.0.0.2")]
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        collector = ServiceMetricsCollector(PodScraper(client, lambda: now[0], model="m"))
        await collector.observe("ns/s", targets, replicas=2, ready_replicas=2)
        now[0] = 30.0
        obs = await collector.observe("ns/s", targets, replicas=2, ready_replicas=2)
    assert not obs.stale
    assert obs.running == 80.0 and obs.request_rate == pytest.approx(4.0)  # (69 - 9) x 2 pods / 30 s
    decision = policy.decide(obs, ScalingBounds(min_replicas=1, max_replicas=8), SLO())
    assert decision.replicas == 4
