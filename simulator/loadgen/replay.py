"""Replay a request trace as real streaming `/v1/completions` calls and record what each request saw.

Open loop: every request is sent at its (compressed) trace time whether or not earlier ones have finished,
as production traffic would be. Per request it records time to first token, mean and worst inter-token gap,
end-to-end latency and failures. The clock is injected so tests can drive time.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import httpx
import numpy as np

from autoscaler.types import SLO
from simulator.loadgen.summary import LatencySummary
from simulator.traces import Trace

PromptMode = Literal["token_ids", "words"]

# Token id repeated to build a prompt of exact length; 1000 is an ordinary word piece in common vocabularies
_FILLER_TOKEN_ID = 1000


class Clock(Protocol):
    """Monotonic seconds and a sleep, so replay can run on wall time or a test's time."""

    def now(self) -> float:
        """Current time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait for `seconds`."""
        ...


class MonotonicClock:
    """The process's monotonic clock."""

    def now(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """`asyncio.sleep`."""
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class ReplayConfig:
    """How to replay: where to, how fast, and what each request looks like."""

    target: str  # base URL of an engine or gateway, e.g. http://127.0.0.1:8080
    model: str = "simulated"  # the `model` field of each request
    compress: float = 1.0  # trace seconds per replay second (60 plays an hour in a minute)
    duration_s: float | None = None  # stop sending after this many replay seconds (None: whole trace)
    timeout_s: float = 300.0  # per-request total timeout
    max_in_flight: int = 4096  # connection cap; a request waiting for a slot is sent late (see send lag)
    prompt_mode: PromptMode = "token_ids"  # token id list (exact length) or filler words (one per token)
    time_scale: float = 1.0  # virtual seconds per wall second of the target; latencies are reported virtual

    def __post_init__(self) -> None:
        if self.compress <= 0:
            raise ValueError(f"compress must be positive, got {self.compress}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {self.time_scale}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")


@dataclass(frozen=True)
class RequestRecord:
    """What one request saw; times in seconds on the replay clock (0 = replay start)."""

    index: int
    scheduled_s: float  # when the trace says to send it (after compression)
    sent_s: float  # when it was actually sent
    prompt_tokens: int
    max_tokens: int
    status: int = 0  # HTTP status, 0 when no response arrived
    output_tokens: int = 0  # streamed tokens received
    ttft_s: float = math.nan  # send -> first token
    itl_mean_s: float = math.nan  # mean gap between consecutive tokens
    itl_max_s: float = math.nan  # worst gap between consecutive tokens
    e2e_s: float = math.nan  # send -> last byte
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Completed with HTTP 200 and at least one token."""
        return self.error is None and self.status == 200 and self.output_tokens > 0


def build_prompt(n_tokens: int, mode: PromptMode) -> list[int] | str:
    """A prompt of n_tokens tokens: a token-id list (exact for any tokenizer-free engine) or filler words."""
    n = max(1, n_tokens)
    if mode == "token_ids":
        return [_FILLER_TOKEN_ID] * n
    return " ".join(["hello"] * n)


def completion_body(prompt_tokens: int, max_tokens: int, cfg: ReplayConfig) -> dict[str, object]:
    """The JSON body of one streaming completion request."""
    return {
        "model": cfg.model,
        "prompt": build_prompt(prompt_tokens, cfg.prompt_mode),
        "max_tokens": max(1, max_tokens),
        "stream": True,
        "ignore_eos": True,  # vLLM extension: generate exactly max_tokens, as the trace did
        "temperature": 0.0,
    }


def _tokens_in(event: dict[str, object]) -> int:
    """Tokens carried by one streamed completion chunk (one per chunk with text or a finish)."""
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices:
        return 0
    first = choices[0]
    if not isinstance(first, dict):
        return 0
    text = first.get("text")
    if text is None:
        delta = first.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    return 1 if text else 0


def _aborted(event: dict[str, object]) -> bool:
    choices = event.get("choices")
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") == "abort" for c in choices)


@dataclass
class _Stream:
    token_times: list[float] = field(default_factory=list)


async def send_one(
    client: httpx.AsyncClient,
    cfg: ReplayConfig,
    clock: Clock,
    index: int,
    scheduled_s: float,
    origin: float,
    prompt_tokens: int,
    max_tokens: int,
) -> RequestRecord:
    """Send one streaming completion and measure it (never raises for HTTP or network faults)."""
    sent = clock.now()
    stream = _Stream()
    status = 0
    error: str | None = None
    end = sent
    try:
        async with client.stream(
            "POST", "/v1/completions", json=completion_body(prompt_tokens, max_tokens, cfg)
        ) as resp:
            status = resp.status_code
            if status != 200:
                body = (await resp.aread()).decode(errors="replace")
                error = f"HTTP {status}: {body[:200]}"
            else:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    event = json.loads(payload)
                    if "error" in event:
                        error = f"stream error: {event['error']}"
                        break
                    if _aborted(event):
                        # vLLM ends a request it gave up on (shutdown, client gone) with this reason: not served.
                        error = "aborted by the engine"
                    t = clock.now()
                    stream.token_times.extend([t] * _tokens_in(event))
        end = clock.now()
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        end = clock.now()
    # A target running on a scaled clock answers time_scale times faster than its virtual latencies
    k = cfg.time_scale
    times = stream.token_times
    gaps = np.diff(times) * k if len(times) > 1 else np.zeros(0)
    return RequestRecord(
        index=index,
        scheduled_s=scheduled_s,
        sent_s=sent - origin,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        status=status,
        output_tokens=len(times),
        ttft_s=(times[0] - sent) * k if times else math.nan,
        itl_mean_s=float(gaps.mean()) if len(gaps) else math.nan,
        itl_max_s=float(gaps.max()) if len(gaps) else math.nan,
        e2e_s=(end - sent) * k,
        error=error or (None if times else "no tokens received"),
    )


async def replay(
    trace: Trace,
    cfg: ReplayConfig,
    *,
    client: httpx.AsyncClient | None = None,
    clock: Clock | None = None,
) -> list[RequestRecord]:
    """Send every request of `trace` (compressed, cut at cfg.duration_s) and return records by index."""
    clock = clock or MonotonicClock()
    own_client = client is None
    if client is None:
        limits = httpx.Limits(max_connections=cfg.max_in_flight, max_keepalive_connections=cfg.max_in_flight)
        client = httpx.AsyncClient(base_url=cfg.target, timeout=cfg.timeout_s, limits=limits)
    slots = asyncio.Semaphore(cfg.max_in_flight)
    origin = clock.now()
    schedule = trace.arrival_s / cfg.compress
    n = len(trace) if cfg.duration_s is None else int(np.searchsorted(schedule, cfg.duration_s, side="left"))

    async def run(i: int) -> RequestRecord:
        async with slots:
            return await send_one(
                client,
                cfg,
                clock,
                i,
                float(schedule[i]),
                origin,
                int(trace.prompt_tokens[i]),
                int(trace.output_tokens[i]),
            )

    tasks: list[asyncio.Task[RequestRecord]] = []
    try:
        for i in range(n):
            delay = origin + float(schedule[i]) - clock.now()
            if delay > 0:
                await clock.sleep(delay)
            tasks.append(asyncio.create_task(run(i)))
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        if own_client:
            await client.aclose()


def summarize(records: Sequence[RequestRecord], slo: SLO) -> LatencySummary:
    """SLO attainment and latency quantiles of replayed requests."""
    return LatencySummary.from_arrays(
        np.array([r.ttft_s for r in records], dtype=float),
        np.array([r.itl_mean_s for r in records], dtype=float),
        np.array([r.e2e_s for r in records], dtype=float),
        np.array([r.ok for r in records], dtype=bool),
        slo,
    )


def send_lag(records: Sequence[RequestRecord]) -> float:
    """Worst lateness of a send against its schedule (large: the client, not the server, lagged)."""
    return max((r.sent_s - r.scheduled_s for r in records), default=0.0)
