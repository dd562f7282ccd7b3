"""Reading what engines answer: server-sent events, Prometheus text, and the answers recorded from real vLLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

RECORDED = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32.0"
DONE = "[DONE]"


def recorded_json(name: str) -> Any:
    """A JSON answer recorded from vLLM 0.32.0 (fixtures/vllm-0.32.0/README.md says how)."""
    return json.loads((RECORDED / name).read_text())


def recorded_http(name: str) -> tuple[int, Any]:
    """Status and JSON body of a recorded raw HTTP answer (`curl -i`)."""
    head, _, body = (RECORDED / name).read_text().partition("\n\n")
    return int(head.split()[1]), json.loads(body) if body.strip() else None


def recorded_metrics() -> dict[str, Metric]:
    """vLLM 0.32.0's /metrics after a few requests, by family name."""
    return families((RECORDED / "metrics.txt").read_text())


def recorded_stream(name: str) -> list[dict[str, Any] | str]:
    return sse_events((RECORDED / name).read_text().splitlines())


def sse_events(lines: list[str]) -> list[dict[str, Any] | str]:
    """The `data:` payloads of an event stream: JSON chunks, and "[DONE]" as a string. Other lines are errors."""
    events: list[dict[str, Any] | str] = []
    for line in lines:
        if not line:
            continue
        if not line.startswith("data: "):
            raise AssertionError(f"not an SSE data line: {line!r}")
        payload = line[len("data: ") :]
        events.append(DONE if payload == DONE else json.loads(payload))
    return events


def stream(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any] | str]]:
    """POST a streaming request and read the whole event stream."""
    with client.stream("POST", path, json=body) as response:
        lines = list(response.iter_lines())
    return response, sse_events(lines) if response.status_code == 200 else []


def families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def scrape(client: httpx.Client) -> dict[str, Metric]:
    response = client.get("/metrics")
    response.raise_for_status()
    return families(response.text)


def value(fams: dict[str, Metric], sample_name: str, **labels: str) -> float:
    """Sum of the samples of that name whose labels include `labels` (0 when there is none)."""
    return sum(
        float(s.value)
        for f in fams.values()
        for s in f.samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def family_of(fams: dict[str, Metric], metric: str) -> Metric | None:
    """The family a metric name belongs to; counters are keyed without their `_total` suffix."""
    return fams.get(metric) or fams.get(metric.removesuffix("_total"))
