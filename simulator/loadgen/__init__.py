"""Load replay: a least-outstanding gateway, trace replay over streaming HTTP, and latency summaries."""

from simulator.loadgen.gateway import (
    BackendSource,
    Gateway,
    KubernetesBackends,
    NoBackendError,
    Router,
    StaticBackends,
    ready_engine_urls,
)
from simulator.loadgen.replay import (
    Clock,
    MonotonicClock,
    ReplayConfig,
    RequestRecord,
    build_prompt,
    completion_body,
    replay,
    send_lag,
    summarize,
)
from simulator.loadgen.summary import LatencySummary, meets_slo

__all__ = [
    "BackendSource",
    "Clock",
    "Gateway",
    "KubernetesBackends",
    "LatencySummary",
    "MonotonicClock",
    "NoBackendError",
    "ReplayConfig",
    "RequestRecord",
    "Router",
    "StaticBackends",
    "build_prompt",
    "completion_body",
    "meets_slo",
    "ready_engine_urls",
    "replay",
    "send_lag",
    "summarize",
]
