"""Prometheus metrics under vLLM's names, types, buckets and labels (vllm/v1/metrics/loggers.py), or SGLang's.

Each engine owns a CollectorRegistry, so many engines can run in one process. Labels are vLLM V1's
`model_name` and `engine` ("0": one engine core per server); the success counter adds `finished_reason`.
prometheus_client appends `_total` to counters, exactly as it does for vLLM.

With `--metric-names sglang` the engine exports what SGLang 0.5.x exports with `--enable-metrics` for the series
the operator reads (sglang/srt/observability/metrics_collector.py: names, types, buckets; the label `model_name`
only, not SGLang's `engine_type`/`is_streaming`), and nothing under vLLM's names.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# "none": no /metrics route at all (404), as SGLang answers without --enable-metrics.
MetricNames = Literal["vllm", "sglang", "none"]

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TOKEN_LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
REQUEST_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
SGLANG_TTFT_BUCKETS = (
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    2.0,
    4.0,
    6.0,
    8.0,
    10.0,
    20.0,
    40.0,
    60.0,
    80.0,
    100.0,
    200.0,
    400.0,
)
SGLANG_ITL_BUCKETS = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080, 0.100, 0.200, 0.400,
    0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000,
)  # fmt: skip
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM 0.32.0 exports all five


def build_1_2_5_buckets(max_value: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to max_value, as vLLM builds its token-count buckets."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(float(value))
        exponent += 1


class EngineMetrics:
    """The engine's metric families, bound to its labels."""

    def __init__(
        self,
        model_name: str,
        max_model_len: int,
        registry: CollectorRegistry | None = None,
        names_of: MetricNames = "vllm",
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if names_of == "sglang":
            # vLLM's families still count (the engine core feeds them) but are not exported.
            self._build_sglang(model_name)
            reg = CollectorRegistry()
        else:
            reg = self.registry
        names = ["model_name", "engine"]
        values = [model_name, "0"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=reg).labels(*values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=reg).labels(*values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...] | list[float]) -> Histogram:
            return Histogram(name, doc, names, registry=reg, buckets=buckets).labels(*values)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=reg,
        )
        self.success = {reason: success.labels(*values, reason) for reason in FINISHED_REASONS}
        token_buckets = build_1_2_5_buckets(max_model_len)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.request_max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", token_buckets
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_TOKEN_BUCKETS
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", TOKEN_LATENCY_BUCKETS
        )
        self.request_tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            TOKEN_LATENCY_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )

        if names_of == "sglang":
            self._alias_sglang()

    def _build_sglang(self, model_name: str) -> None:
        reg, names, values = self.registry, ["model_name"], [model_name]
        self._sg_running = Gauge("sglang:num_running_reqs", "The number of running requests.", names, registry=reg)
        self._sg_queue = Gauge(
            "sglang:num_queue_reqs", "The number of requests in the waiting queue.", names, registry=reg
        )
        self._sg_usage = Gauge("sglang:token_usage", "The token usage.", names, registry=reg)
        self._sg_prompt = Counter("sglang:prompt_tokens", "Number of prefill tokens processed.", names, registry=reg)
        self._sg_gen = Counter(
            "sglang:generation_tokens", "Number of generation tokens processed.", names, registry=reg
        )
        self._sg_requests = Counter("sglang:num_requests", "Number of requests processed.", names, registry=reg)
        self._sg_ttft = Histogram(
            "sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", names,
            registry=reg, buckets=SGLANG_TTFT_BUCKETS,
        )  # fmt: skip
        self._sg_itl = Histogram(
            "sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", names,
            registry=reg, buckets=SGLANG_ITL_BUCKETS,
        )  # fmt: skip
        self._sg_values = values

    def _alias_sglang(self) -> None:
        """Point the series the engine core feeds at SGLang's families instead of vLLM's."""
        v = self._sg_values
        self.running, self.waiting, self.kv_usage = (
            self._sg_running.labels(*v), self._sg_queue.labels(*v), self._sg_usage.labels(*v),
        )  # fmt: skip
        self.prompt_tokens, self.generation_tokens = self._sg_prompt.labels(*v), self._sg_gen.labels(*v)
        self.ttft, self.itl = self._sg_ttft.labels(*v), self._sg_itl.labels(*v)
        finished = self._sg_requests.labels(*v)  # SGLang counts finished requests whatever their reason
        self.success = dict.fromkeys(FINISHED_REASONS, finished)

    def set_scheduler_state(self, running: int, waiting: int, kv_usage: float) -> None:
        """Update the scheduler gauges after an iteration."""
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_usage.set(kv_usage)

    def render(self) -> bytes:
        """The Prometheus text exposition of this engine's metrics."""
        return generate_latest(self.registry)
