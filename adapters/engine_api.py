"""The engines' HTTP endpoints the controllers call: trainer progress and checkpoints, and the serving engines'
elastic-EP resize. Serving engines are drained by SIGTERM with `--shutdown-timeout` (controllers/planners/drain.py),
not by any call."""

from __future__ import annotations

import logging

import httpx

from adapters.engine_metrics import MetricsParseError, parse_vllm_metrics
from controllers.planners.snapshot import PodView
from crds import labels as L

log = logging.getLogger(__name__)


def engine_url(pod: PodView, port: int) -> str | None:
    """Where a pod's engine listens: the address annotation of the simulated fleet, else the pod IP."""
    if L.ENGINE_URL in pod.annotations:
        return pod.annotations[L.ENGINE_URL].rstrip("/")
    return f"http://{pod.ip}:{port}" if pod.ip else None


class EngineClient:
    """The trainers' control endpoints."""

    def __init__(self, timeout_s: float = 3.0) -> None:
        self.http = httpx.AsyncClient(timeout=timeout_s)

    async def close(self) -> None:
        await self.http.aclose()

    async def progress(self, url: str) -> tuple[int | None, bool]:
        try:
            data = (await self.http.get(f"{url}/admin/progress")).json()
            return int(data.get("step", 0)), bool(data.get("done", False))
        except (httpx.HTTPError, ValueError, TypeError):
            return None, False

    async def checkpoint(self, url: str) -> tuple[str, int] | None:
        """Ask for a checkpoint; (path, step) once the trainer confirms it."""
        try:
            r = await self.http.post(f"{url}/admin/checkpoint", json={}, timeout=30.0)
            r.raise_for_status()
            data = r.json()
            return str(data["path"]), int(data["step"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            log.warning("checkpoint request to %s failed: %s", url, e)
            return None


class ElasticEPClient:
    """The engines' own resize calls (docs/engines.md): vLLM's `POST /scale_elastic_ep` and a canary completion.

    Used by the width-change operation of controllers/planners/rescale.py; every call is one the real engine
    answers. A resize call returns when the engine has finished (vLLM answers only then), so its timeout is long.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.http = httpx.AsyncClient(transport=transport)

    async def close(self) -> None:
        await self.http.aclose()

    async def scale(self, url: str, width: int, drain_timeout_s: int, *, engine: str = "vllm") -> int | None:
        """The HTTP status of the resize (200, 400, 408, 500, 503, ...), None when the engine could not be reached."""
        body: dict[str, int] = (
            {"new_ep_size": width}
            if engine == "sglang"
            else {"new_data_parallel_size": width, "drain_timeout": drain_timeout_s}
        )
        try:
            r = await self.http.post(f"{url}/scale_elastic_ep", json=body, timeout=drain_timeout_s + 600.0)
        except httpx.HTTPError as e:
            log.warning("resize request to %s failed: %s", url, e)
            return None
        if r.status_code != 200:
            log.warning("engine %s answered the resize with %d: %s", url, r.status_code, r.text[:300])
        return r.status_code

    async def inflight(self, url: str, model: str) -> int | None:
        """Requests the engine runs or queues (its /metrics gauges); None when they cannot be read."""
        try:
            r = await self.http.get(f"{url}/metrics", timeout=5.0)
            r.raise_for_status()
            sample = parse_vllm_metrics(r.text, url, 0.0, model)
        except (httpx.HTTPError, MetricsParseError) as e:
            log.warning("reading requests in flight at %s failed: %s", url, e)
            return None
        return round(sample.running + sample.waiting)

    async def canary(self, url: str, model: str) -> bool:
        """One short completion at the new width; True when it comes back whole."""
        body = {"model": model, "prompt": "ping", "max_tokens": 1}
        try:
            r = await self.http.post(f"{url}/v1/completions", json=body, timeout=30.0)
            return r.status_code == 200 and bool(r.json().get("choices"))
        except (httpx.HTTPError, ValueError):
            return False
