"""The engines' HTTP endpoints the controllers call: trainers' metrics, vLLM's runtime LoRA routes and the
serving engines' elastic-EP resize. Serving engines are drained by SIGTERM with `--shutdown-timeout`
(controllers/planners/drain.py), and trainers checkpoint on SIGTERM (docs/finetuning.md), not by any call."""

from __future__ import annotations

import logging
import math

import httpx
from prometheus_client.parser import text_string_to_metric_families

from adapters.engine_metrics import MetricsParseError, parse_vllm_metrics
from controllers.planners.finetune import TrainerReport
from controllers.planners.snapshot import PodView
from crds import labels as L

log = logging.getLogger(__name__)


def engine_url(pod: PodView, port: int) -> str | None:
    """Where a pod's engine listens: the address annotation of the simulated fleet, else the pod IP."""
    if L.ENGINE_URL in pod.annotations:
        return pod.annotations[L.ENGINE_URL].rstrip("/")
    return f"http://{pod.ip}:{port}" if pod.ip else None


class EngineClient:
    """What the controllers read from or ask of engines: trainers' Prometheus metrics (the checkpoint contract of
    docs/finetuning.md) and vLLM's runtime LoRA routes."""

    def __init__(self, timeout_s: float = 3.0) -> None:
        self.http = httpx.AsyncClient(timeout=timeout_s)

    async def close(self) -> None:
        await self.http.aclose()

    async def trainer_report(self, url: str) -> TrainerReport | None:
        """The trainer's ebbtide_trainer_* metrics; None when it does not answer."""
        try:
            r = await self.http.get(f"{url}/metrics")
            r.raise_for_status()
            return parse_trainer_metrics(r.text)
        except (httpx.HTTPError, ValueError) as e:
            log.debug("trainer metrics from %s: %s", url, e)
            return None

    async def adapters(self, url: str) -> dict[str, str] | None:
        """The LoRA adapters a vLLM lists in /v1/models (entries with a parent): name -> path; None: no answer."""
        try:
            r = await self.http.get(f"{url}/v1/models")
            r.raise_for_status()
            return {m["id"]: str(m.get("root")) for m in r.json()["data"] if m.get("parent")}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            log.debug("models from %s: %s", url, e)
            return None

    async def load_adapter(self, url: str, name: str, path: str) -> tuple[int, str]:
        """vLLM's POST /v1/load_lora_adapter; (status, body). 400 means loaded already; 404 a path it cannot read."""
        return await self._post(f"{url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def unload_adapter(self, url: str, name: str) -> tuple[int, str]:
        """vLLM's POST /v1/unload_lora_adapter; (status, body). 404 means not loaded."""
        return await self._post(f"{url}/v1/unload_lora_adapter", {"lora_name": name})

    async def _post(self, url: str, body: dict[str, str]) -> tuple[int, str]:
        try:
            r = await self.http.post(url, json=body, timeout=60.0)
            return r.status_code, r.text[:500]
        except httpx.HTTPError as e:
            return 0, str(e) or type(e).__name__


def parse_trainer_metrics(text: str) -> TrainerReport:
    """A TrainerReport from the Prometheus text of a trainer (real or simulated: the same names)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ebbtide_trainer_"):
                values[sample.name] = sample.value
    if "ebbtide_trainer_step" not in values:
        raise ValueError("no ebbtide_trainer_step: not a trainer's metrics")

    def whole(name: str) -> int | None:
        v = values.get(name)
        return None if v is None or v < 0 else int(v)

    loss = values.get("ebbtide_trainer_loss")
    return TrainerReport(
        step=whole("ebbtide_trainer_step"),
        done=values.get("ebbtide_trainer_done", 0) >= 1,
        checkpoint_step=whole("ebbtide_trainer_checkpoint_step"),
        resumed_from=whole("ebbtide_trainer_resumed_from_step"),
        loss=None if loss is None or math.isnan(loss) else loss,
    )


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
