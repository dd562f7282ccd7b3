"""Gateway routing against real aiohttp backends, Kubernetes backend discovery, and trace replay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web

from autoscaler.types import SLO
from simulator.engine.server import shutdown
from simulator.loadgen import (
    Gateway,
    KubernetesBackends,
    ReplayConfig,
    RequestRecord,
    Router,
    StaticBackends,
    build_prompt,
    ready_engine_urls,
    replay,
    summarize,
)
from simulator.loadgen.__main__ import parse_args
from simulator.traces import SLICES, Trace, load_azure
from tests.unit.simulator.engine_support import engine_argv, serve_engine


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run an aiohttp app on an ephemeral port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@dataclass
class HeldBackend:
    """A fake engine that streams one SSE token per request and holds the stream open until released."""

    name: str
    received: list[str] = field(default_factory=list)
    release: dict[str, asyncio.Event] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        return app

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        tag = body["tag"]
        self.received.append(tag)
        gate = self.release.setdefault(tag, asyncio.Event())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"text":" hi"}]}\n\n')
        await gate.wait()
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def wait_for(predicate: Any, within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class TestRouter:
    def test_least_outstanding_then_fewest_routed_then_url(self) -> None:
        router = Router()
        router.update(["http://b", "http://a"])
        first = router.pick()
        assert first.url == "http://a"
        with router.track(first):
            assert router.pick().url == "http://b"
        # Both idle again; a has been used once, so b goes next
        assert router.pick().url == "http://b"

    def test_update_keeps_state_of_surviving_backends(self) -> None:
        router = Router()
        router.update(["http://a", "http://b"])
        a = router.pick()
        with router.track(a):
            router.update(["http://a", "http://c"])
            urls = {s.url: s.outstanding for s in router.snapshot()}
        assert urls == {"http://a": 1, "http://c": 0}


class TestGateway:
    async def test_routes_to_the_backend_with_fewest_outstanding(self) -> None:
        a, b = HeldBackend("a"), HeldBackend("b")
        async with serve(a.app()) as url_a, serve(b.app()) as url_b:
            gw = Gateway(StaticBackends([url_a, url_b]), refresh_s=60)
            async with serve(gw.app()) as gw_url, httpx.AsyncClient(base_url=gw_url, timeout=10) as client:

                async def send(tag: str) -> str:
                    r = await client.post("/v1/completions", json={"tag": tag, "prompt": [1], "stream": True})
                    return r.text

                # Sorted URLs break the first tie deterministically
                first, second = (a, b) if url_a < url_b else (b, a)
                t1 = asyncio.create_task(send("r1"))
                await wait_for(lambda: first.received == ["r1"])
                t2 = asyncio.create_task(send("r2"))
                await wait_for(lambda: second.received == ["r2"])
                backends = (await client.get("/gateway/backends")).json()
                assert [s["outstanding"] for s in backends] == [1, 1]
                first.release.setdefault("r1", asyncio.Event()).set()
                assert "[DONE]" in await t1
                await wait_for(lambda: gw.router.snapshot()[0].outstanding + gw.router.snapshot()[1].outstanding == 1)
                t3 = asyncio.create_task(send("r3"))
                await wait_for(lambda: first.received == ["r1", "r3"])
                for backend, tag in ((second, "r2"), (first, "r3")):
                    backend.release.setdefault(tag, asyncio.Event()).set()
                assert "[DONE]" in await t2 and "[DONE]" in await t3
                assert second.received == ["r2"]

    async def test_no_backend_is_a_503_and_a_dead_backend_a_502(self) -> None:
        gw = Gateway(StaticBackends([]), refresh_s=60)
        async with serve(gw.app()) as gw_url, httpx.AsyncClient(base_url=gw_url) as client:
            r = await client.post("/v1/completions", json={"prompt": [1]})
            assert r.status_code == 503
            assert "no ready backend" in r.json()["error"]["message"]
            gw.router.update(["http://127.0.0.1:1"])  # nothing listens on port 1
            r = await client.post("/v1/completions", json={"prompt": [1]})
            assert r.status_code == 502
            assert gw.router.snapshot()[0].failures == 1


class FlakySource:
    """A backend source whose second listing fails, as an API server hiccup would."""

    def __init__(self) -> None:
        self.calls = 0

    async def backends(self) -> list[str]:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("apiserver unavailable")
        return ["http://a"] if self.calls == 1 else ["http://b"]


async def test_refresh_keeps_the_last_backends_when_the_source_fails() -> None:
    gw = Gateway(FlakySource())
    await gw.refresh()
    await gw.refresh()
    assert [s.url for s in gw.router.snapshot()] == ["http://a"]
    await gw.refresh()
    assert [s.url for s in gw.router.snapshot()] == ["http://b"]


def pod(name: str, url: str | None, ready: bool, deleting: bool = False) -> SimpleNamespace:
    annotations = {"ebbtide.dev/engine-url": url} if url else {}
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, annotations=annotations, deletion_timestamp="now" if deleting else None),
        status=SimpleNamespace(conditions=[SimpleNamespace(type="Ready", status="True" if ready else "False")]),
    )


class FakeCoreV1:
    def __init__(self, pods: list[SimpleNamespace]) -> None:
        self.pods = pods
        self.calls: list[tuple[str, str]] = []

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> SimpleNamespace:
        self.calls.append((namespace, label_selector))
        return SimpleNamespace(items=self.pods)


class TestKubernetesBackends:
    def test_only_ready_annotated_live_pods(self) -> None:
        pods = [
            pod("c", "http://10.0.0.3:8000/", True),
            pod("a", "http://10.0.0.1:8000", True),
            pod("b", "http://10.0.0.2:8000", False),
            pod("d", None, True),
            pod("e", "http://10.0.0.5:8000", True, deleting=True),
        ]
        assert ready_engine_urls(pods) == ["http://10.0.0.1:8000", "http://10.0.0.3:8000"]

    async def test_lists_the_services_entry_pods_off_the_event_loop(self) -> None:
        api = FakeCoreV1([pod("a", "http://10.0.0.1:8000", True)])
        source = KubernetesBackends("llama", "team-a", api=api)
        assert await source.backends() == ["http://10.0.0.1:8000"]
        assert api.calls == [("team-a", "ebbtide.dev/service=llama,ebbtide.dev/entrypoint=true")]


class TestReplay:
    def test_prompt_has_the_trace_length(self) -> None:
        assert build_prompt(7, "token_ids") == [1000] * 7
        text = build_prompt(3, "words")
        assert isinstance(text, str) and len(text.split()) == 3

    def test_summary_counts_failures_as_misses(self) -> None:
        def rec(i: int, ttft: float, itl: float, status: int = 200) -> RequestRecord:
            return RequestRecord(
                i, 0.0, 0.0, 10, 5, status, 5 if status == 200 else 0, ttft, itl, itl, 1.0,
                None if status == 200 else "HTTP 500",
            )  # fmt: skip

        records = [rec(0, 0.5, 0.05), rec(1, 3.0, 0.05), rec(2, 0.5, 0.2), rec(3, math.nan, math.nan, 500)]
        s = summarize(records, SLO(ttft_s=2.0, itl_s=0.1))
        assert s.requests == 4 and s.failed == 1
        assert s.slo_attainment == pytest.approx(0.25)

    async def test_azure_slice_through_the_gateway_to_two_real_engines(self) -> None:
        slice_ = load_azure("conv", SLICES).window(60.0, 68.0)
        trace = Trace(
            "azure-conv",
            slice_.arrival_s,
            np.minimum(slice_.prompt_tokens, 2000),
            np.minimum(slice_.output_tokens, 32),  # keep the test short; lengths still vary per request
            slice_.duration_s,
        )
        # Modest time compression: on a busy machine the event loop, not the engine, would set the latency
        scale = 2.0
        argv = engine_argv("llama-3.1-8b", "H100", scale)
        async with serve_engine(argv) as e1, serve_engine(argv) as e2:
            gw = Gateway(StaticBackends([e1.base_url, e2.base_url]), refresh_s=60)
            async with serve(gw.app()) as gw_url:
                cfg = ReplayConfig(target=gw_url, model="llama-3.1-8b", compress=scale, time_scale=scale)
                records = await replay(trace, cfg)
            m1, m2 = await e1.metrics(), await e2.metrics()
        assert len(records) == len(trace) > 15
        assert all(r.ok for r in records), [r.error for r in records if not r.ok][:3]
        assert [r.output_tokens for r in records] == trace.output_tokens.tolist()
        ttft = np.array([r.ttft_s for r in records])
        # Virtual TTFT: at least a prefill of the prompt; well under a second on a lightly loaded 8B replica
        assert np.all(ttft > 0.005) and np.median(ttft) < 1.0
        itl = np.array([r.itl_mean_s for r in records if r.output_tokens > 1])
        assert 0.003 < np.median(itl) < 0.1
        served = [
            sum(s.value for f in m.values() for s in f.samples if s.name == "vllm:request_success_total")
            for m in (m1, m2)
        ]
        assert sum(served) == len(trace) and min(served) > 0  # both engines took a share

    def test_cli_arguments(self) -> None:
        args = parse_args(["--trace", "azure-conv", "--target", "http://x", "--compress", "60", "--duration", "120"])
        assert args.compress == 60 and args.duration == 120 and args.prompt_mode == "token_ids"


def test_records_are_json_serialisable() -> None:
    r = RequestRecord(0, 0.0, 0.0, 1, 1)
    assert json.loads(json.dumps(r.__dict__))["index"] == 0


async def test_a_stream_the_engine_aborts_is_a_failed_request() -> None:
    # An engine that aborts at SIGTERM (vLLM without --shutdown-timeout) ends the stream politely, with
    # finish_reason "abort" and [DONE]: the request was not served, however many tokens arrived.
    async with serve_engine(engine_argv("llama-3-8b", "H100", 10)) as e:
        trace = Trace("one", np.array([0.0]), np.array([16]), np.array([5000]), 1.0)
        replaying = asyncio.create_task(replay(trace, ReplayConfig(target=e.base_url, model="llama-3-8b")))
        for _ in range(500):
            if sample_running(await e.metrics()) >= 1:
                break
            await asyncio.sleep(0.01)
        await shutdown(e.app)
        [record] = await replaying
    assert record.status == 200 and 0 < record.output_tokens < 5000
    assert not record.ok and record.error == "aborted by the engine"


def sample_running(families: dict[str, Any]) -> float:
    return sum(s.value for f in families.values() for s in f.samples if s.name == "vllm:num_requests_running")
