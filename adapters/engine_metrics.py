"""Engine metrics over HTTP: parse a pod's Prometheus text, scrape pods, or query a Prometheus server.

The I/O half of observation; what the numbers mean (deltas, quantiles, aggregation) is `autoscaler.observation`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.observation import (
    GENERATION_TOKENS,
    ITL,
    KV_CACHE,
    PROMPT_TOKENS,
    REQUEST_SUCCESS,
    RUNNING,
    TTFT,
    WAITING,
    Histogram,
    PodSample,
    ScrapeAggregator,
    ScrapeResult,
    build_promql_queries,
    observation_from_promql,
    parse_promql_scalar,
)
from autoscaler.types import ScrapeFailure, ServiceObservation

DEFAULT_URL_TEMPLATE = "http://{podIP}:{port}/metrics"
# SGLang (0.5.x, `--enable-metrics`; sglang/srt/observability/metrics_collector.py) exports the same signals under
# its own names: read into the same PodSample. SGLang counts finished requests whatever their reason.
SGLANG_NAMES = {
    "sglang:num_running_reqs": RUNNING,
    "sglang:num_queue_reqs": WAITING,
    "sglang:token_usage": KV_CACHE[0],
    "sglang:prompt_tokens_total": PROMPT_TOKENS,
    "sglang:generation_tokens_total": GENERATION_TOKENS,
    "sglang:num_requests_total": REQUEST_SUCCESS,
    "sglang:time_to_first_token_seconds": TTFT,
    "sglang:inter_token_latency_seconds": ITL[0],
}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class MetricsParseError(ValueError):
    """The exposition text could not be parsed, or holds none of the vLLM engine metrics."""


class ModelNotServedError(MetricsParseError):
    """The engine's series name other models than the one asked for (a wrong model filter)."""


def _bound(le: str) -> float:
    return math.inf if le in ("+Inf", "Inf", "inf") else float(le)


def _histogram(buckets: Mapping[float, float], total_sum: float) -> Histogram | None:
    if not buckets:
        return None
    bounds = tuple(sorted(buckets))
    if not math.isinf(bounds[-1]):
        return None  # a histogram without +Inf is malformed; ignore it rather than guess its count
    return Histogram(bounds, tuple(buckets[b] for b in bounds), total_sum)


def _vllm_name(name: str) -> str | None:
    """The vLLM sample name a vLLM or SGLang sample stands for; None for anything else."""
    if name.startswith("vllm:"):
        return name
    if name in SGLANG_NAMES:
        return SGLANG_NAMES[name]
    for suffix in _HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and base in SGLANG_NAMES:
            return SGLANG_NAMES[base] + suffix
    return None


def parse_vllm_metrics(text: str, pod: str, t: float, model: str | None = None) -> PodSample:
    """Parse one pod's /metrics text (vLLM's names, or SGLang's) into a PodSample, summing series over engines
    (and over models unless `model` names one). Raises MetricsParseError on malformed text or when no engine
    metric is present, and ModelNotServedError when `model` is none of the `model_name`s the engine reports."""
    gauges: dict[str, float] = {}
    kv: dict[str, list[float]] = {name: [] for name in KV_CACHE}
    hist: dict[str, dict[float, float]] = {}
    hist_sum: dict[str, float] = {}
    seen = False
    models: set[str] = set()
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as err:
        raise MetricsParseError(f"pod {pod}: unparseable exposition text: {err}") from err
    for family in families:
        for sample in family.samples:
            mapped, labels, value = _vllm_name(sample.name), sample.labels, float(sample.value)
            if mapped is None:
                continue
            name = mapped
            if "model_name" in labels:
                models.add(labels["model_name"])
            # Engine-wide series carry no model_name: they count whatever the filter.
            if model is not None and labels.get("model_name", model) != model:
                continue
            if not math.isfinite(value):
                continue
            seen = True
            if name in KV_CACHE:
                kv[name].append(value)
            elif name.endswith("_bucket") and "le" in labels:
                base = name[: -len("_bucket")]
                le = _bound(labels["le"])
                per = hist.setdefault(base, {})
                per[le] = per.get(le, 0.0) + value
            elif name.endswith("_sum"):
                base = name[: -len("_sum")]
                hist_sum[base] = hist_sum.get(base, 0.0) + value
            else:
                gauges[name] = gauges.get(name, 0.0) + value
    if model is not None and models and model not in models:
        raise ModelNotServedError(
            f"pod {pod}: no metrics for model {model!r}; the engine reports model_name {', '.join(sorted(models))}"
        )
    if not seen:
        raise MetricsParseError(f"pod {pod}: no vllm: or sglang: metrics in the exposition text")
    kv_values = kv[KV_CACHE[0]] or kv[KV_CACHE[1]]
    itl_name = ITL[0] if ITL[0] in hist else ITL[1]
    return PodSample(
        pod=pod,
        t=t,
        running=gauges.get(RUNNING, 0.0),
        waiting=gauges.get(WAITING, 0.0),
        kv_cache_usage=sum(kv_values) / len(kv_values) if kv_values else None,
        prompt_tokens=gauges.get(PROMPT_TOKENS, 0.0),
        generation_tokens=gauges.get(GENERATION_TOKENS, 0.0),
        request_success=gauges.get(REQUEST_SUCCESS, 0.0),
        ttft=_histogram(hist.get(TTFT, {}), hist_sum.get(TTFT, 0.0)),
        itl=_histogram(hist.get(itl_name, {}), hist_sum.get(itl_name, 0.0)),
    )


# --- fetching -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodTarget:
    """Where to scrape one engine pod: its IP and port, or an engine URL taken from an address annotation."""

    name: str
    pod_ip: str | None = None
    port: int = 8000
    engine_url: str | None = None


def target_url(template: str, target: PodTarget) -> str:
    """The metrics URL of a pod; `{podIP}`, `{port}`, `{name}` and `{engineURL}` are substituted."""
    needs_ip = "{podIP}" in template
    needs_engine = "{engineURL}" in template
    if needs_ip and not target.pod_ip:
        raise ValueError(f"pod {target.name} has no IP yet")
    if needs_engine and not target.engine_url:
        raise ValueError(f"pod {target.name} has no engine URL annotation")
    engine = (target.engine_url or "").rstrip("/")
    return template.format(podIP=target.pod_ip or "", port=target.port, name=target.name, engineURL=engine)


@dataclass
class ScrapeStats:
    """Running totals a shell can export as its own metrics."""

    scrapes: int = 0
    failures: int = 0


class PodScraper:
    """Scrapes engine pods over HTTP with bounded concurrency and a per-pod timeout; failures are recorded."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        clock: Callable[[], float],
        *,
        url_template: str = DEFAULT_URL_TEMPLATE,
        concurrency: int = 16,
        timeout_s: float = 2.0,
        model: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._client = client
        self._clock = clock
        self._template = url_template
        self._semaphore = asyncio.Semaphore(concurrency)
        self._timeout = timeout_s
        self._model = model
        self.stats = ScrapeStats()

    async def _one(self, target: PodTarget) -> PodSample | ScrapeFailure:
        try:
            url = target_url(self._template, target)
        except ValueError as err:
            return ScrapeFailure(None, None, str(err))
        async with self._semaphore:
            try:
                response = await self._client.get(url, timeout=self._timeout)
            except httpx.HTTPError as err:
                return ScrapeFailure(url, None, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
            t = self._clock()
        if not response.is_success:
            # A 404 is what an engine without metrics answers (SGLang without --enable-metrics): never a sample.
            return ScrapeFailure(url, response.status_code, f"HTTP {response.status_code} {response.reason_phrase}")
        try:
            return parse_vllm_metrics(response.text, target.name, t, self._model)
        except MetricsParseError as err:
            return ScrapeFailure(url, response.status_code, str(err))

    async def scrape(self, targets: Sequence[PodTarget]) -> ScrapeResult:
        """Scrape every target concurrently; never raises for a single pod's failure."""
        results = await asyncio.gather(*(self._one(t) for t in targets))
        samples: dict[str, PodSample] = {}
        failures: dict[str, ScrapeFailure] = {}
        for target, result in zip(targets, results, strict=True):
            if isinstance(result, PodSample):
                samples[target.name] = result
            else:
                failures[target.name] = result
        self.stats.scrapes += len(targets)
        self.stats.failures += len(failures)
        return ScrapeResult(self._clock(), samples, failures)


class ServiceMetricsCollector:
    """Pod scrapes turned into observations: every call yields rates over the interval since the last one."""

    def __init__(self, scraper: PodScraper, *, min_coverage: float = 0.5) -> None:
        self._scraper = scraper
        self._aggregator = ScrapeAggregator(min_coverage=min_coverage)

    async def observe(
        self, service: str, targets: Sequence[PodTarget], *, replicas: int, ready_replicas: int
    ) -> ServiceObservation:
        """Scrape the service's pods and aggregate against the previous good scrape."""
        cur = await self._scraper.scrape(targets)
        return self._aggregator.observe(service, cur, replicas=replicas, ready_replicas=ready_replicas)

    def forget(self, service: str) -> None:
        """Drop a deleted service's previous scrape."""
        self._aggregator.forget(service)


# --- Prometheus HTTP API mode ----------------------------------------------------------------------------

# The labels the chart's PodMonitor gives engine series: prometheus-operator adds the pod's `namespace`, and the
# PodMonitor relabels the pod label ebbtide.dev/service (__meta_kubernetes_pod_label_ebbtide_dev_service) to
# `service` (helm/ebbtide/templates/metrics.yaml), which is also what the dashboard selects on.
DEFAULT_SELECTOR = 'namespace="{namespace}",service="{service}"'


class PrometheusQuerySource:
    """Reads a service's observation from a Prometheus server's /api/v1/query instead of scraping pods."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        clock: Callable[[], float],
        *,
        selector_template: str = DEFAULT_SELECTOR,
        window: str = "1m",
        timeout_s: float = 5.0,
        concurrency: int = 8,
    ) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._clock = clock
        self._selector = selector_template
        self._window = window
        self._timeout = timeout_s
        self._semaphore = asyncio.Semaphore(concurrency)
        self.stats = ScrapeStats()

    async def _query(self, promql: str) -> float | None:
        async with self._semaphore:
            try:
                response = await self._client.get(
                    f"{self._base}/api/v1/query", params={"query": promql}, timeout=self._timeout
                )
                response.raise_for_status()
                payload = response.json()
            except (httpx.HTTPError, ValueError):
                self.stats.failures += 1
                return None
        self.stats.scrapes += 1
        return parse_promql_scalar(payload)

    async def observe(
        self, service: str, targets: Sequence[PodTarget] = (), *, replicas: int, ready_replicas: int
    ) -> ServiceObservation:
        """Query the `namespace/name` service's series concurrently and build the observation (stale if
        Prometheus did not answer). Prometheus finds the pods itself, so `targets` is not used."""
        namespace, _, name = service.rpartition("/")
        selector = self._selector.format(namespace=namespace, service=name)
        queries = build_promql_queries(selector, self._window)
        answers = await asyncio.gather(*(self._query(q) for q in queries.values()))
        values = dict(zip(queries, answers, strict=True))
        return observation_from_promql(service, self._clock(), values, replicas=replicas, ready_replicas=ready_replicas)

    def forget(self, service: str) -> None:
        """Nothing is kept per service: Prometheus holds the history."""
