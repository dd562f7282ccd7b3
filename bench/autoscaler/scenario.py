"""What the autoscaler benchmark simulates: the hardware profile, the traces scaled to one service, and the
engine calibration that gives the policies their per-replica capacity.

Hardware: Llama-3.1-70B (70.6 B dense, the Llama-3-70B shape with a 128K context so long Azure prompts fit) on
H100 80GB with tensor parallel 4, i.e. four GPUs per replica, vLLM-like limits (8192 batched tokens, 256
sequences). Cold start: 90 s image pull + 141 GB of weights read at 1.5 GB/s + 20 s engine start-up (the
PerfModel's `cold_start_seconds`), about 3.4 minutes, paid from binding the pod to serving.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from autoscaler.capacity import EngineProfile
from autoscaler.forecast import GENERATION_TOKEN_RATE, PROMPT_TOKEN_RATE, REQUEST_RATE
from autoscaler.types import SLO, ScalingBounds, ScalingDecision, ServiceObservation
from simulator.cluster import ClusterConfig, ClusterSimulator
from simulator.traces import (
    LengthSampler,
    ServeGenTrace,
    Trace,
    azure_length_sampler,
    load_azure,
    load_servegen,
)

MODEL = "llama-3.1-70b"
GPU = "H100"
TENSOR_PARALLEL = 4
IMAGE_PULL_S = 90.0
LOAD_GBPS = 1.5
BENCH_SLO = SLO(ttft_s=2.0, itl_s=0.1, attainment=0.99)
DECISION_INTERVAL_S = 30.0
STABILIZATION_S = 300.0
MAX_REPLICAS = 64
DAY_S = 86400.0
ORACLE_RESOLUTION_S = 10.0


def cold_start_s() -> float:
    """Seconds from binding a replica to serving, from the performance model."""
    return (
        ClusterConfig(model=MODEL, gpu=GPU, tensor_parallel=TENSOR_PARALLEL)
        .perf()
        .cold_start_seconds(IMAGE_PULL_S, LOAD_GBPS)
    )


def bounds() -> ScalingBounds:
    """The service's scaling bounds (the policies know the cold start as their lead time)."""
    return ScalingBounds(
        min_replicas=1,
        max_replicas=MAX_REPLICAS,
        scale_down_stabilization_s=STABILIZATION_S,
        cold_start_s=cold_start_s(),
        decision_interval_s=DECISION_INTERVAL_S,
    )


def cluster_config(initial_replicas: int) -> ClusterConfig:
    """The simulated service."""
    return ClusterConfig(
        service="bench",
        model=MODEL,
        gpu=GPU,
        tensor_parallel=TENSOR_PARALLEL,
        image_pull_s=IMAGE_PULL_S,
        load_gbps=LOAD_GBPS,
        initial_replicas=initial_replicas,
        bounds=bounds(),
        slo=BENCH_SLO,
    )


@lru_cache(maxsize=4)
def lengths(kind: str) -> LengthSampler:
    """Empirical (prompt, output) lengths of an Azure trace ("conv" or "code")."""
    return azure_length_sampler(kind)


@dataclass(frozen=True)
class Scenario:
    """A span of one trace scaled to one service.

    ServeGen: every client's rate times `scale`, arrivals synthesized per window (seeded), Azure
    conversation lengths. Azure: the hour replayed by `scale` clients at once, each request sent by every
    client within `jitter_s` of its trace time, so the minute-scale bursts keep their shape at `scale` times
    the rate. A warm-up (the preceding trace time; for Azure the end of the same hour) runs first so that
    forecasters start with history; it is simulated but not measured.
    """

    trace: str  # "servegen-m-mid", "azure-conv" or "azure-code"
    start_s: float
    end_s: float
    scale: float
    seed: int = 0
    jitter_s: float = 1.0
    warmup_s: float = 0.0

    @property
    def duration_s(self) -> float:
        """Measured span."""
        return self.end_s - self.start_s

    @property
    def sim_end_s(self) -> float:
        """Simulated span: warm-up plus measured span."""
        return self.warmup_s + self.duration_s

    @property
    def length_kind(self) -> str:
        """Which Azure length table the requests follow."""
        return "code" if self.trace == "azure-code" else "conv"

    @property
    def label(self) -> str:
        """Human-readable name with span and scaling."""
        if self.trace.startswith("servegen"):
            return f"{self.trace} x{self.scale:g}, hours {self.start_s / 3600:.0f}-{self.end_s / 3600:.0f}"
        return f"{self.trace} x{self.scale:g} clients, {self.duration_s / 60:.0f} min"

    def chunks(self, chunk_s: float = 3600.0) -> Iterator[tuple[float, Trace]]:
        """(offset from the simulation start, trace) chunks covering warm-up and span, in time order."""
        origin = self.start_s - self.warmup_s
        if self.trace == "servegen-m-mid":
            table = _servegen()
            for t, tr in table.synthesize_chunks(
                max(0.0, origin),
                self.end_s,
                seed=self.seed,
                chunk_s=chunk_s,
                rate_scale=self.scale,
                lengths=lengths("conv"),
            ):
                yield t - origin, tr
            return
        whole = _azure_copies(self.trace, int(self.scale), self.jitter_s, self.seed)
        if self.warmup_s > 0:
            yield 0.0, whole.window(whole.duration_s - self.warmup_s, whole.duration_s)
        yield self.warmup_s, whole.window(self.start_s, self.end_s)


@lru_cache(maxsize=1)
def _servegen() -> ServeGenTrace:
    return load_servegen("m-mid")


@lru_cache(maxsize=4)
def _azure_copies(trace: str, copies: int, jitter_s: float, seed: int) -> Trace:
    base = load_azure(trace.split("-", 1)[1])
    rng = np.random.default_rng([seed, copies])
    arrival = np.concatenate([base.arrival_s + rng.uniform(0, jitter_s, len(base)) for _ in range(copies)])
    order = np.argsort(arrival, kind="stable")
    prompt = np.tile(base.prompt_tokens, copies)[order]
    output = np.tile(base.output_tokens, copies)[order]
    return Trace(trace, arrival[order], prompt, output, base.duration_s + jitter_s)


@dataclass(frozen=True)
class LoadSeries:
    """The realised demand of a scenario in fixed buckets: requests/s and prompt/generated tokens/s."""

    bucket_s: float
    request_rate: np.ndarray
    prompt_rate: np.ndarray
    generation_rate: np.ndarray

    def at(self, t: float) -> Mapping[str, float]:
        """Demand in force at time t (the oracle's view of the future)."""
        i = int(t // self.bucket_s)
        if not 0 <= i < len(self.request_rate):
            return {REQUEST_RATE: 0.0, PROMPT_TOKEN_RATE: 0.0, GENERATION_TOKEN_RATE: 0.0}
        return {
            REQUEST_RATE: float(self.request_rate[i]),
            PROMPT_TOKEN_RATE: float(self.prompt_rate[i]),
            GENERATION_TOKEN_RATE: float(self.generation_rate[i]),
        }

    def need(self, profile: EngineProfile) -> np.ndarray:
        """Replicas (fractional) each bucket's demand needs at the profiled capacity."""
        need = self.request_rate / profile.request_rate
        if profile.prompt_token_rate:
            need = np.maximum(need, self.prompt_rate / profile.prompt_token_rate)
        if profile.generation_token_rate:
            need = np.maximum(need, self.generation_rate / profile.generation_token_rate)
        return need

    def coarsen(self, factor: int) -> LoadSeries:
        """Means over `factor` consecutive buckets."""
        n = len(self.request_rate) // factor * factor

        def mean(a: np.ndarray) -> np.ndarray:
            return a[:n].reshape(-1, factor).mean(axis=1)

        return LoadSeries(
            self.bucket_s * factor, mean(self.request_rate), mean(self.prompt_rate), mean(self.generation_rate)
        )


def load_series(scenario: Scenario, bucket_s: float = ORACLE_RESOLUTION_S) -> LoadSeries:
    """Bucket the scenario's requests (same seed as the simulation, so the oracle sees the real future)."""
    n = math.ceil(scenario.sim_end_s / bucket_s)
    req = np.zeros(n)
    pro = np.zeros(n)
    gen = np.zeros(n)
    for offset, tr in scenario.chunks():
        idx = np.minimum(((tr.arrival_s + offset) // bucket_s).astype(np.int64), n - 1)
        req += np.bincount(idx, minlength=n)
        pro += np.bincount(idx, weights=tr.prompt_tokens, minlength=n)
        gen += np.bincount(idx, weights=tr.output_tokens, minlength=n)
    return LoadSeries(bucket_s, req / bucket_s, pro / bucket_s, gen / bucket_s)


@dataclass(frozen=True)
class Calibration:
    """Per-replica capacity measured on the simulator: the profile the policies are given."""

    length_kind: str
    profile: EngineProfile
    kpa_concurrency: float  # in-flight requests per replica at that capacity (Little's law, measured)
    sweep: tuple[tuple[float, float], ...] = field(default_factory=tuple)  # (rate, attainment) tried


class _Fixed:
    def decide(self, obs: ServiceObservation, bounds: ScalingBounds, slo: SLO) -> ScalingDecision:
        return ScalingDecision(1, "calibration: one replica")


def _poisson(rate: float, duration: float, sampler: LengthSampler, seed: int) -> Trace:
    rng = np.random.default_rng([seed, int(rate * 1000)])
    n = int(rng.poisson(rate * duration))
    arrival = np.sort(rng.uniform(0, duration, n))
    p, o = sampler.sample(n, rng)
    return Trace("poisson", arrival, p, o, duration)


def calibrate(
    length_kind: str, *, duration_s: float = 1800.0, seed: int = 0, log: Callable[[str], None] = print
) -> Calibration:
    """The highest Poisson rate one replica serves at the SLO attainment target (bisection to 0.1 req/s).

    Like an offline vLLM benchmark: steady Poisson load, the trace's length mix, one replica, 30 minutes.
    """
    sampler = lengths(length_kind)
    cfg = cluster_config(1)

    def attain(rate: float) -> tuple[float, float]:
        res = ClusterSimulator(cfg, _Fixed()).run(_poisson(rate, duration_s, sampler, seed), duration_s)
        tl = res.timeline
        inflight = float(np.mean(tl["running"] + tl["waiting"])) if len(tl["t"]) else 0.0
        return res.summary().slo_attainment, inflight

    tried: list[tuple[float, float]] = []
    lo, hi = 0.1, 1.0
    while True:
        a, _ = attain(hi)
        tried.append((hi, a))
        if a < BENCH_SLO.attainment:
            break
        lo, hi = hi, hi * 2
    while hi - lo > 0.1:
        mid = (lo + hi) / 2
        a, _ = attain(mid)
        tried.append((mid, a))
        lo, hi = (mid, hi) if a >= BENCH_SLO.attainment else (lo, mid)
    _, inflight = attain(lo)
    light = ClusterSimulator(cfg, _Fixed()).run(_poisson(0.2, duration_s, sampler, seed), duration_s).summary()
    profile = EngineProfile(
        request_rate=lo,
        prompt_token_rate=lo * sampler.mean_prompt,
        generation_token_rate=lo * sampler.mean_output,
        ttft_s=light.ttft_p50_s,
        itl_s=light.itl_p50_s,
    )
    log(
        f"calibrated {length_kind}: {lo:.2f} req/s per replica at {BENCH_SLO.attainment:.0%} attainment, "
        f"{inflight:.1f} in flight"
    )
    return Calibration(length_kind, profile, inflight, tuple(sorted(tried)))
