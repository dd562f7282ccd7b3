"""DCGM exporter scrapes: per-GPU draw, the power limit in force, and the pod on each GPU.

dcgm-exporter writes `DCGM_FI_DEV_POWER_USAGE` and `DCGM_FI_DEV_POWER_MGMT_LIMIT` per GPU (label `gpu`), with
`namespace`/`pod` labels when its Kubernetes pod mapping is on. The simulated fleet serves the same exposition.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controllers.planners.power import GPUSample

# The node annotation that points at a node's dcgm-exporter /metrics (the simulated fleet sets it; on a real
# cluster the chart's dcgm-exporter Service can be named per node the same way).
DCGM_URL_ANNOTATION = "ebbtide.dev/dcgm-url"


def parse_dcgm(text: str) -> list[GPUSample]:
    """The GPUs of one dcgm-exporter page, by index."""
    draw: dict[int, float] = {}
    limit: dict[int, float] = {}
    pods: dict[int, tuple[str, str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name not in ("DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_POWER_MGMT_LIMIT"):
                continue
            index = int(s.labels.get("gpu", "-1"))
            if index < 0:
                continue
            (draw if s.name == "DCGM_FI_DEV_POWER_USAGE" else limit)[index] = float(s.value)
            if s.labels.get("pod"):
                pods[index] = (s.labels.get("namespace", ""), s.labels["pod"])
    return [GPUSample(i, draw[i], limit.get(i, 0.0), pods.get(i)) for i in sorted(draw)]


async def scrape_dcgm(http: httpx.AsyncClient, url: str) -> list[GPUSample] | str:
    """A node's GPUs from its exporter, or why not (the power manager then treats the node as unmeasured)."""
    try:
        r = await http.get(url.rstrip("/") + "/metrics")
        r.raise_for_status()
        return parse_dcgm(r.text)
    except (httpx.HTTPError, ValueError) as exc:
        return f"{url}: {exc}"


class DcgmScraper:
    """Scrapes dcgm-exporter pages over one HTTP client (MockTransport in tests)."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 0.8) -> None:
        self.http = httpx.AsyncClient(transport=transport, timeout=timeout_s)

    async def scrape(self, url: str) -> list[GPUSample] | str:
        return await scrape_dcgm(self.http, url)

    async def close(self) -> None:
        await self.http.aclose()
