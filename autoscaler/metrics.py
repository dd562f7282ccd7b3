"""vLLM engine metrics: parse Prometheus text, aggregate pods and scrapes into a ServiceObservation, fetch.

Parsing (`parse_vllm_metrics`) and aggregation (`aggregate_scrapes`, `observation_from_promql`) are pure
functions of their inputs; only `PodScraper`, `ServiceMetricsCollector` and `PrometheusQuerySource` do I/O.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.types import ServiceObservation

# Metric names as vLLM exposes them; the second name of a pair is what older (v0) engines call the same thing.
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
TTFT = "vllm:time_to_first_token_seconds"
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
REQUEST_SUCCESS = "vllm:request_success_total"

DEFAULT_URL_TEMPLATE = "http://{podIP}:{port}/metrics"


class MetricsParseError(ValueError):
    """The exposition text could not be parsed, or holds none of the vLLM engine metrics."""


@dataclass(frozen=True)
class Histogram:
    """A cumulative Prometheus histogram: ascending upper bounds (last +Inf), count at or below each."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float = 0.0

    @property
    def count(self) -> float:
        """Observations in the histogram (the +Inf bucket)."""
        return self.cumulative[-1] if self.cumulative else 0.0


@dataclass(frozen=True)
class PodSample:
    """One scrape of one pod: gauges, cumulative counters and latency histograms, summed over its engines."""

    pod: str
    t: float
    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float | None = None
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    request_success: float = 0.0
    ttft: Histogram | None = None
    itl: Histogram | None = None


@dataclass(frozen=True)
class ScrapeResult:
    """All pods of one service scraped at one tick; pods that failed are named with the reason."""

    t: float
    samples: Mapping[str, PodSample] = field(default_factory=dict)
    failures: Mapping[str, str] = field(default_factory=dict)


def _bound(le: str) -> float:
    return math.inf if le in ("+Inf", "Inf", "inf") else float(le)


def _histogram(buckets: Mapping[float, float], total_sum: float) -> Histogram | None:
    if not buckets:
        return None
    bounds = tuple(sorted(buckets))
    if not math.isinf(bounds[-1]):
        return None  # a histogram without +Inf is malformed; ignore it rather than guess its count
    return Histogram(bounds, tuple(buckets[b] for b in bounds), total_sum)


def parse_vllm_metrics(text: str, pod: str, t: float, model: str | None = None) -> PodSample:
    """Parse one pod's /metrics text into a PodSample, summing series over engines (and over models unless
    `model` names one). Raises MetricsParseError on malformed text or when no vLLM metric is present."""
    gauges: dict[str, float] = {}
    kv: dict[str, list[float]] = {name: [] for name in KV_CACHE}
    hist: dict[str, dict[float, float]] = {}
    hist_sum: dict[str, float] = {}
    seen = False
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as err:
        raise MetricsParseError(f"pod {pod}: unparseable exposition text: {err}") from err
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if not name.startswith("vllm:"):
                continue
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
    if not seen:
        raise MetricsParseError(f"pod {pod}: no vllm: metrics in the exposition text")
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


def counter_delta(prev: float, cur: float) -> float:
    """Increase of a counter between two reads; a drop means the process restarted and counted from zero."""
    return cur if cur < prev else cur - prev


def histogram_delta(prev: Histogram | None, cur: Histogram | None) -> Histogram | None:
    """Observations between two reads of a histogram, treating any decrease (or new buckets) as a reset."""
    if cur is None:
        return None
    if prev is None or prev.bounds != cur.bounds:
        return cur
    if any(c < p for p, c in zip(prev.cumulative, cur.cumulative, strict=True)):
        return cur
    return Histogram(
        cur.bounds,
        tuple(c - p for p, c in zip(prev.cumulative, cur.cumulative, strict=True)),
        max(cur.sum - prev.sum, 0.0),
    )


def _cumulative_at(h: Histogram, bound: float) -> float:
    # Step lookup: a bound between two of h's buckets gets the lower one's count (quantiles err upwards).
    i = bisect.bisect_right(h.bounds, bound) - 1
    return h.cumulative[i] if i >= 0 else 0.0


def merge_histograms(hists: Iterable[Histogram | None]) -> Histogram | None:
    """Sum histograms from several pods; differing bucket layouts are merged on the union of bounds."""
    present = [h for h in hists if h is not None and h.bounds]
    if not present:
        return None
    bounds = tuple(sorted({b for h in present for b in h.bounds}))
    cumulative = tuple(sum(_cumulative_at(h, b) for h in present) for b in bounds)
    return Histogram(bounds, cumulative, sum(h.sum for h in present))


def histogram_quantile(q: float, h: Histogram | None) -> float | None:
    """Quantile q of a histogram, interpolated linearly inside a bucket as Prometheus does; None if empty."""
    if h is None or h.count <= 0:
        return None
    rank = q * h.count
    i = bisect.bisect_left(h.cumulative, rank)
    i = min(i, len(h.bounds) - 1)
    upper = h.bounds[i]
    if math.isinf(upper):
        finite = [b for b in h.bounds if not math.isinf(b)]
        return finite[-1] if finite else None
    lower = h.bounds[i - 1] if i > 0 else 0.0
    below = h.cumulative[i - 1] if i > 0 else 0.0
    in_bucket = h.cumulative[i] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


def aggregate_scrapes(
    service: str,
    prev: ScrapeResult | None,
    cur: ScrapeResult,
    *,
    replicas: int,
    ready_replicas: int,
    min_coverage: float = 0.5,
) -> ServiceObservation:
    """Two consecutive scrapes of a service's pods as one ServiceObservation: rates from reset-aware counter
    deltas, quantiles from bucket deltas; stale without a previous scrape or when too few pods answered."""
    # Pods missing from a scrape are extrapolated from the others: the load balancer spreads load evenly.
    expected = len(cur.samples) + len(cur.failures)
    if expected == 0 and replicas == 0:
        # No pods and none wanted: demand at zero replicas has to come from the caller (e.g. a gateway queue).
        return ServiceObservation(service, cur.t, replicas, ready_replicas, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    coverage = len(cur.samples) / expected if expected else 0.0
    gauge_scale = 1.0 / coverage if coverage > 0 else 0.0
    running = sum(s.running for s in cur.samples.values()) * gauge_scale
    waiting = sum(s.waiting for s in cur.samples.values()) * gauge_scale
    kv_values = [s.kv_cache_usage for s in cur.samples.values() if s.kv_cache_usage is not None]
    kv = sum(kv_values) / len(kv_values) if kv_values else 0.0

    requests = prompt = generation = 0.0
    ttft_deltas: list[Histogram | None] = []
    itl_deltas: list[Histogram | None] = []
    contributing = 0
    window = cur.t - prev.t if prev is not None else 0.0
    if prev is not None and window > 0:
        for pod, s in cur.samples.items():
            before = prev.samples.get(pod)
            if before is None and pod in prev.failures:
                continue  # its counters span an unknown stretch; the coverage scale stands in for it
            # A pod absent last time started since then, so everything it counted falls inside the window.
            base = before or PodSample(pod, prev.t)
            requests += counter_delta(base.request_success, s.request_success)
            prompt += counter_delta(base.prompt_tokens, s.prompt_tokens)
            generation += counter_delta(base.generation_tokens, s.generation_tokens)
            ttft_deltas.append(histogram_delta(base.ttft, s.ttft))
            itl_deltas.append(histogram_delta(base.itl, s.itl))
            contributing += 1
    rate_coverage = contributing / expected if expected else 0.0
    stale = prev is None or window <= 0 or coverage < min_coverage or rate_coverage < min_coverage
    rate_scale = 1.0 / (rate_coverage * window) if rate_coverage > 0 and window > 0 else 0.0
    ttft = merge_histograms(ttft_deltas)
    itl = merge_histograms(itl_deltas)
    return ServiceObservation(
        service=service,
        now=cur.t,
        replicas=replicas,
        ready_replicas=ready_replicas,
        request_rate=requests * rate_scale,
        prompt_token_rate=prompt * rate_scale,
        generation_token_rate=generation * rate_scale,
        queue_length=waiting,
        running=running,
        kv_cache_usage=kv,
        ttft_p50_s=histogram_quantile(0.5, ttft),
        ttft_p95_s=histogram_quantile(0.95, ttft),
        itl_p50_s=histogram_quantile(0.5, itl),
        itl_p95_s=histogram_quantile(0.95, itl),
        stale=stale,
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

    async def _one(self, target: PodTarget) -> PodSample | str:
        try:
            url = target_url(self._template, target)
        except ValueError as err:
            return str(err)
        async with self._semaphore:
            try:
                response = await self._client.get(url, timeout=self._timeout)
                response.raise_for_status()
            except httpx.HTTPError as err:
                return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            t = self._clock()
        try:
            return parse_vllm_metrics(response.text, target.name, t, self._model)
        except MetricsParseError as err:
            return str(err)

    async def scrape(self, targets: Sequence[PodTarget]) -> ScrapeResult:
        """Scrape every target concurrently; never raises for a single pod's failure."""
        results = await asyncio.gather(*(self._one(t) for t in targets))
        samples: dict[str, PodSample] = {}
        failures: dict[str, str] = {}
        for target, result in zip(targets, results, strict=True):
            if isinstance(result, PodSample):
                samples[target.name] = result
            else:
                failures[target.name] = result
        self.stats.scrapes += len(targets)
        self.stats.failures += len(failures)
        return ScrapeResult(self._clock(), samples, failures)


class ServiceMetricsCollector:
    """Keeps each service's previous scrape so that every call yields rates over the last interval."""

    def __init__(self, scraper: PodScraper, *, min_coverage: float = 0.5) -> None:
        self._scraper = scraper
        self._min_coverage = min_coverage
        self._last: dict[str, ScrapeResult] = {}

    async def observe(
        self, service: str, targets: Sequence[PodTarget], *, replicas: int, ready_replicas: int
    ) -> ServiceObservation:
        """Scrape the service's pods and aggregate against the previous good scrape."""
        cur = await self._scraper.scrape(targets)
        obs = aggregate_scrapes(
            service,
            self._last.get(service),
            cur,
            replicas=replicas,
            ready_replicas=ready_replicas,
            min_coverage=self._min_coverage,
        )
        if cur.samples or not targets:
            self._last[service] = cur  # keep the last scrape that saw pods, so the next rate spans the outage
        return obs

    def forget(self, service: str) -> None:
        """Drop a deleted service's previous scrape."""
        self._last.pop(service, None)


# --- Prometheus HTTP API mode ----------------------------------------------------------------------------

DEFAULT_SELECTOR = 'namespace="{namespace}",ebbtide_dev_service="{service}"'


def build_promql_queries(selector: str, window: str = "1m") -> dict[str, str]:
    """The PromQL instant queries that make up one observation, keyed by ServiceObservation field."""
    s = "{" + selector + "}"

    def quantile(q: float, metric: str) -> str:
        return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{s}[{window}])))"

    return {
        "pods": f"count({RUNNING}{s})",
        "request_rate": f"sum(rate({REQUEST_SUCCESS}{s}[{window}]))",
        "prompt_token_rate": f"sum(rate({PROMPT_TOKENS}{s}[{window}]))",
        "generation_token_rate": f"sum(rate({GENERATION_TOKENS}{s}[{window}]))",
        "queue_length": f"sum({WAITING}{s})",
        "running": f"sum({RUNNING}{s})",
        "kv_cache_usage": f"avg({KV_CACHE[0]}{s})",
        "ttft_p50_s": quantile(0.5, TTFT),
        "ttft_p95_s": quantile(0.95, TTFT),
        "itl_p50_s": quantile(0.5, ITL[0]),
        "itl_p95_s": quantile(0.95, ITL[0]),
    }


def parse_promql_scalar(payload: Mapping[str, Any]) -> float | None:
    """The single value of an instant-vector answer from /api/v1/query; None if empty, NaN or an error."""
    if payload.get("status") != "success":
        return None
    result = payload.get("data", {}).get("result", [])
    if not result:
        return None
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def observation_from_promql(
    service: str, now: float, values: Mapping[str, float | None], *, replicas: int, ready_replicas: int
) -> ServiceObservation:
    """Build an observation from query answers; stale when no pod reports or the request rate is missing."""
    pods = values.get("pods") or 0.0
    rate = values.get("request_rate")
    stale = (pods <= 0 or rate is None) and replicas > 0

    def get(key: str) -> float:
        v = values.get(key)
        return v if v is not None else 0.0

    return ServiceObservation(
        service=service,
        now=now,
        replicas=replicas,
        ready_replicas=ready_replicas,
        request_rate=get("request_rate"),
        prompt_token_rate=get("prompt_token_rate"),
        generation_token_rate=get("generation_token_rate"),
        queue_length=get("queue_length"),
        running=get("running"),
        kv_cache_usage=get("kv_cache_usage"),
        ttft_p50_s=values.get("ttft_p50_s"),
        ttft_p95_s=values.get("ttft_p95_s"),
        itl_p50_s=values.get("itl_p50_s"),
        itl_p95_s=values.get("itl_p95_s"),
        stale=stale,
    )


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

    async def observe(self, namespace: str, service: str, *, replicas: int, ready_replicas: int) -> ServiceObservation:
        """Run the queries concurrently and build the observation (stale if Prometheus did not answer)."""
        selector = self._selector.format(namespace=namespace, service=service)
        queries = build_promql_queries(selector, self._window)
        answers = await asyncio.gather(*(self._query(q) for q in queries.values()))
        values = dict(zip(queries, answers, strict=True))
        return observation_from_promql(
            f"{namespace}/{service}", self._clock(), values, replicas=replicas, ready_replicas=ready_replicas
        )
