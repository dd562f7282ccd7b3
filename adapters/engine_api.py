"""The engines' HTTP endpoints the controllers call: trainer progress and checkpoints. Serving engines are drained
by SIGTERM with `--shutdown-timeout` (controllers/planners/drain.py), not by any call."""

from __future__ import annotations

import logging

import httpx

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
