"""What a scrape of a simulated replica shows: vLLM's metrics, as the operator's scraper would parse them.

Each replica keeps cumulative counters (requests finished = `vllm:request_success_total`, prompt and generated
tokens) and cumulative histograms with vLLM's own bucket bounds (time to first token, inter-token latency:
every token gap), and its gauges (running, waiting, KV-cache use). The simulator turns them into the
`autoscaler.observation.PodSample`s a scrape of real engines yields, and aggregates them with the same
`ScrapeAggregator`, so the autoscaler sees simulated load exactly as it sees vLLM's: a request counts when it
completes, not when it arrives, and latency quantiles come from bucket deltas.
"""

from __future__ import annotations

import math

import numpy as np

from autoscaler.observation import Histogram, PodSample
from simulator.cluster.replica import IntervalStats, ReplicaModel
from simulator.engine.metrics import TOKEN_LATENCY_BUCKETS, TTFT_BUCKETS

_TTFT = np.asarray(TTFT_BUCKETS, dtype=float)
_ITL = np.asarray(TOKEN_LATENCY_BUCKETS, dtype=float)


def _histogram(bounds: np.ndarray, counts: np.ndarray, total: float) -> Histogram:
    return Histogram((*bounds.tolist(), math.inf), tuple(np.cumsum(counts).astype(float).tolist()), total)


class EngineExposition:
    """One replica's cumulative latency histograms (per bucket, vLLM's bounds plus +Inf) and their sums."""

    __slots__ = ("itl", "itl_sum", "ttft", "ttft_sum")

    def __init__(self) -> None:
        self.ttft = np.zeros(len(_TTFT) + 1, dtype=np.int64)
        self.itl = np.zeros(len(_ITL) + 1, dtype=np.int64)
        self.ttft_sum = 0.0
        self.itl_sum = 0.0

    def fold(self, stats: IntervalStats) -> None:
        """Add the interval's samples to the histograms and clear them (a value on a bound counts in it: le)."""
        if stats.ttft:
            v = np.asarray(stats.ttft, dtype=float)
            self.ttft += np.bincount(np.searchsorted(_TTFT, v, side="left"), minlength=len(self.ttft))
            self.ttft_sum += float(v.sum())
        if stats.gap_s:
            gaps = np.asarray(stats.gap_s, dtype=float)
            counts = np.asarray(stats.gap_count, dtype=np.int64)
            idx = np.searchsorted(_ITL, gaps, side="left")
            self.itl += np.bincount(idx, weights=counts, minlength=len(self.itl)).astype(np.int64)
            self.itl_sum += float((gaps * counts).sum())
        stats.clear()

    def sample(self, pod: str, t: float, engine: ReplicaModel) -> PodSample:
        """The replica's metrics page at t, parsed."""
        return PodSample(
            pod=pod,
            t=t,
            running=float(engine.num_running),
            waiting=float(engine.num_waiting),
            kv_cache_usage=engine.kv_usage,
            prompt_tokens=float(engine.prefilled_tokens),
            generation_tokens=float(engine.generated_tokens),
            request_success=float(engine.completed),
            ttft=_histogram(_TTFT, self.ttft, self.ttft_sum),
            itl=_histogram(_ITL, self.itl, self.itl_sum),
        )
