"""Test support for the simulated engine: command lines, a served engine on an ephemeral port, metric parsing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiohttp import web
from openai import AsyncOpenAI
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from simulator.engine import Clock, EngineConfig, create_app, parse_args

REPO_ROOT = Path(__file__).resolve().parents[3]


def engine_argv(model: str = "llama-3-8b", gpu: str = "H100", time_scale: float = 1000.0, *extra: str) -> list[str]:
    """An engine command line with test-friendly defaults (fast virtual time)."""
    return ["--model", model, "--gpu", gpu, "--time-scale", str(time_scale), "--port", "0", *extra]


@dataclass
class Served:
    """An engine listening on 127.0.0.1 and clients for it."""

    base_url: str
    app: web.Application
    cfg: EngineConfig

    def openai(self) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=30)

    async def metrics(self) -> dict[str, Metric]:
        async with self.http() as client:
            text = (await client.get("/metrics")).text
        return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict[str, Metric], name: str, **labels: str) -> float:
    """The value of one sample (by full sample name and label subset), 0 when absent."""
    for family in families.values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


@contextlib.asynccontextmanager
async def serve_engine(argv: list[str], clock: Clock | None = None) -> AsyncIterator[Served]:
    """Start the engine app described by argv on an ephemeral port for the duration of the block."""
    cfg = parse_args(argv)
    app = create_app(cfg, clock)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Served(f"http://127.0.0.1:{port}", app, cfg)
    finally:
        await runner.cleanup()
