"""What the autoscaler observes of a service: vLLM's metric semantics, aggregated into a ServiceObservation.

Pure functions over parsed samples: reset-aware counter deltas, histogram deltas and quantiles, and the
aggregation of two scrapes (or of Prometheus query answers) into one observation. The operator's scraper
(`adapters.engine_metrics`) and the simulator feed the same functions, so both see load the same way.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoscaler.types import ScrapeFailure, ServiceObservation

# Metric names as vLLM exposes them; the second name of a pair is what older (v0) engines call the same thing.
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
TTFT = "vllm:time_to_first_token_seconds"
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
REQUEST_SUCCESS = "vllm:request_success_total"


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
    failures: Mapping[str, ScrapeFailure] = field(default_factory=dict)


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
    failed = tuple(sorted(cur.failures.items()))
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
        engines_asked=expected,
        scrape_failures=failed,
    )


# What a failure on /metrics most often means, by the status the engine answered.
_HINTS = {404: "is --enable-metrics set? (SGLang serves /metrics only with it)"}


def describe_scrape_failures(failures: Iterable[tuple[str, ScrapeFailure]], asked: int) -> str:
    """One line for users: how many of the engines asked failed, grouped by how, with the first pod and URL of
    each group, e.g. "2/2 engines answered HTTP 404 on /metrics (pod chat-0: GET http://10.0.0.7:8000/metrics
    answered HTTP 404): is --enable-metrics set? (...)"."""
    groups: dict[tuple[str, int | None], list[tuple[str, ScrapeFailure]]] = {}
    for pod, f in sorted(failures):
        if f.url is None:
            how = "had no metrics URL"
        elif f.status is not None and f.status >= 400:
            how = f"answered HTTP {f.status} on {_path(f.url)}"
        elif f.status is not None:
            how = f"answered {_path(f.url)} with no engine metrics"
        else:
            how = f"did not answer on {_path(f.url)}"
        groups.setdefault((how, f.status), []).append((pod, f))
    parts = []
    for (how, status), members in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0][0])):
        pod, first = members[0]
        on_metrics = first.url is not None and _path(first.url) == "/metrics"
        hint = _HINTS.get(status) if status is not None and on_metrics else None
        part = f"{len(members)}/{asked} engines {how} (pod {pod}: {first})"
        parts.append(f"{part}: {hint}" if hint else part)
    return "; ".join(parts)


def _path(url: str) -> str:
    """The path of an http(s) URL ("/metrics"), without scheme, host or query."""
    rest = url.split("://", 1)[-1]
    path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return path.split("?", 1)[0]


class ScrapeAggregator:
    """Keeps each service's previous scrape, so that every new one yields rates over the interval between
    them. The operator's pod scraper and the simulator's engines both feed it (the metrics-source port)."""

    def __init__(self, *, min_coverage: float = 0.5) -> None:
        self.min_coverage = min_coverage
        self._last: dict[str, ScrapeResult] = {}

    def observe(self, service: str, cur: ScrapeResult, *, replicas: int, ready_replicas: int) -> ServiceObservation:
        """The observation from this scrape against the previous one that saw pods."""
        obs = aggregate_scrapes(
            service,
            self._last.get(service),
            cur,
            replicas=replicas,
            ready_replicas=ready_replicas,
            min_coverage=self.min_coverage,
        )
        if cur.samples or not cur.failures:
            self._last[service] = cur  # a scrape that reached no pod is skipped, so the next rate spans the outage
        return obs

    def forget(self, service: str) -> None:
        """Drop a deleted service's previous scrape."""
        self._last.pop(service, None)


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
