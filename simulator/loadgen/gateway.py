"""A small OpenAI-compatible gateway: proxies `/v1/*` to a service's ready pods, least outstanding first.

Backends come from a `BackendSource`: a static list (tests, local runs) or the Kubernetes API (ready pods
labelled `ebbtide.dev/service=<name>`, engine URL in the `ebbtide.dev/engine-url` annotation). Responses are
streamed through unchanged, so server-sent events reach the client token by token.

Run one: `python -m simulator.loadgen.gateway --backend http://127.0.0.1:8001 --port 8080`
or `python -m simulator.loadgen.gateway --service llama --namespace default`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from crds import labels as L

log = logging.getLogger(__name__)


# Hop-by-hop headers (RFC 9110 §7.6.1) and those aiohttp recomputes must not be copied across the proxy
_SKIP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)


class BackendSource(Protocol):
    """Where the gateway learns the current ready engine URLs of its service."""

    async def backends(self) -> list[str]:
        """Base URLs (scheme://host:port) of the ready engines, in a stable order."""
        ...


class StaticBackends:
    """A fixed list of engine base URLs."""

    def __init__(self, urls: Sequence[str]) -> None:
        self._urls = [u.rstrip("/") for u in urls]

    async def backends(self) -> list[str]:
        """The configured URLs."""
        return list(self._urls)


def ready_engine_urls(pods: Sequence[Any]) -> list[str]:
    """Engine URLs of Ready, non-terminating pods, sorted; pods without the annotation are skipped."""
    urls: list[str] = []
    for pod in pods:
        meta = pod.metadata
        if meta is None or meta.deletion_timestamp is not None:
            continue
        if L.DRAIN_STARTED in (meta.annotations or {}):
            continue  # the operator is draining this gang: send it nothing new
        url = (meta.annotations or {}).get(L.ENGINE_URL)
        conditions = (pod.status.conditions if pod.status is not None else None) or []
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        if url and ready:
            urls.append(url.rstrip("/"))
    return sorted(urls)


class KubernetesBackends:
    """Ready pods of one LLMService, listed with the official client on a worker thread."""

    def __init__(self, service: str, namespace: str = "default", api: Any | None = None) -> None:
        self.service = service
        self.namespace = namespace
        self._api = api

    def _core_api(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.CoreV1Api()
        return self._api

    def _list(self) -> list[str]:
        # The Service's own selector: worker and joining rank pods, and instances held for a resize, take no traffic.
        selector = f"{L.SERVICE}={self.service},{L.ENTRYPOINT}=true"
        pods = self._core_api().list_namespaced_pod(self.namespace, label_selector=selector)
        return ready_engine_urls(pods.items)

    async def backends(self) -> list[str]:
        """Engine URLs of the service's ready pods (the blocking client call runs in a thread)."""
        return await asyncio.to_thread(self._list)


@dataclass
class BackendState:
    """Routing state of one engine as the gateway sees it."""

    url: str
    outstanding: int = 0  # requests proxied and not yet finished
    routed: int = 0  # requests sent in total
    failures: int = 0  # connection errors and 5xx answers


class NoBackendError(RuntimeError):
    """No ready engine to route to."""


class Router:
    """Least-outstanding routing over a changing backend set.

    Sort key: (1) fewest outstanding requests, (2) fewest requests routed so far, (3) URL — the last makes
    the choice deterministic for a given history.
    """

    def __init__(self) -> None:
        self._states: dict[str, BackendState] = {}

    def update(self, urls: Sequence[str]) -> None:
        """Adopt a new backend set; state of engines that stay is kept, removed engines are forgotten."""
        wanted = {u.rstrip("/") for u in urls}
        for url in list(self._states):
            if url not in wanted:
                del self._states[url]
        for url in wanted:
            self._states.setdefault(url, BackendState(url))

    def pick(self) -> BackendState:
        """The backend to send the next request to."""
        if not self._states:
            raise NoBackendError("no ready backend")
        return min(self._states.values(), key=lambda s: (s.outstanding, s.routed, s.url))

    @contextlib.contextmanager
    def track(self, state: BackendState) -> Any:
        """Count a request as outstanding on `state` for the duration of the block."""
        state.outstanding += 1
        state.routed += 1
        try:
            yield state
        finally:
            state.outstanding -= 1

    def snapshot(self) -> list[BackendState]:
        """Copies of the current per-backend states, sorted by URL."""
        return [
            BackendState(s.url, s.outstanding, s.routed, s.failures)
            for s in sorted(self._states.values(), key=lambda s: s.url)
        ]


class Gateway:
    """The aiohttp application: `/v1/*` proxied, `/healthz`, and `/gateway/backends` for inspection."""

    def __init__(
        self,
        source: BackendSource,
        *,
        refresh_s: float = 2.0,
        request_timeout_s: float = 600.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.source = source
        self.refresh_s = refresh_s
        self.request_timeout_s = request_timeout_s
        self.router = Router()
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def refresh(self) -> None:
        """Fetch the backend set once; on error keep the previous set (an API fault is not an outage)."""
        try:
            urls = await self.source.backends()
        except Exception as exc:
            log.warning("backend refresh failed, keeping %d backends: %s", len(self.router.snapshot()), exc)
            return
        self.router.update(urls)

    async def _refresh_loop(self) -> None:
        while True:
            await self._sleep(self.refresh_s)
            await self.refresh()

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        await self.refresh()
        task = asyncio.create_task(self._refresh_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._session.close()

    def app(self) -> web.Application:
        """Build the aiohttp application (the refresh task and client session live with it)."""
        app = web.Application()
        app.cleanup_ctx.append(self._lifecycle)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/gateway/backends", self._backends)
        app.router.add_route("*", "/v1/{tail:.*}", self._proxy)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "backends": len(self.router.snapshot())})

    async def _backends(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"url": s.url, "outstanding": s.outstanding, "routed": s.routed, "failures": s.failures}
                for s in self.router.snapshot()
            ]
        )

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None, "gateway used outside its application lifecycle"
        try:
            backend = self.router.pick()
        except NoBackendError:
            return web.json_response(
                {"error": {"message": "no ready backend for this service", "type": "unavailable"}}, status=503
            )
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS}
        url = backend.url + request.rel_url.path_qs
        response: web.StreamResponse | None = None
        with self.router.track(backend):
            try:
                async with self._session.request(request.method, url, data=body, headers=headers) as upstream:
                    if upstream.status >= 500:
                        backend.failures += 1
                    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                    for k, v in upstream.headers.items():
                        if k.lower() not in _SKIP_HEADERS:
                            response.headers[k] = v
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                    return response
            except ConnectionResetError:
                # The client went away; leaving the block closes the upstream stream and frees the engine
                return response if response is not None else web.Response(status=499)
            except (aiohttp.ClientError, TimeoutError) as exc:
                backend.failures += 1
                if response is not None:
                    # Headers are already sent: all we can do is cut the stream short
                    return response
                return web.json_response(
                    {"error": {"message": f"backend {backend.url} failed: {exc}", "type": "bad_gateway"}},
                    status=502,
                )


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: serve a gateway over static backends or a Kubernetes service."""
    parser = argparse.ArgumentParser(prog="python -m simulator.loadgen.gateway", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--backend", action="append", help="engine base URL (repeatable)")
    group.add_argument("--service", help="LLMService name: route to its ready pods")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--refresh", type=float, default=2.0, help="seconds between backend refreshes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    source: BackendSource = (
        StaticBackends(args.backend) if args.backend else KubernetesBackends(args.service, args.namespace)
    )
    web.run_app(Gateway(source, refresh_s=args.refresh).app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
