"""The Ebbtide operator process: `python operator/main.py [flags]` (see settings.py for every flag)."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any


def cap_malloc_arenas(arenas: int = 2) -> None:
    """At most `arenas` glibc malloc arenas (as MALLOC_ARENA_MAX does). glibc gives threads that allocate their
    own arenas, up to 8 per core; the API pool and the watch threads then kept memory freed in one arena from
    being reused by another (2,000 nodes: 16 arenas holding 61 MB). No-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_arena_max = -8  # glibc's malloc.h
    libc.mallopt(m_arena_max, arenas)


cap_malloc_arenas()  # before any thread starts

# operator/ is not a package (it would shadow the standard library's `operator`): put the repo root and
# this folder on the path explicitly.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent), str(_HERE)]

import httpx  # noqa: E402
import kopf  # noqa: E402
import prometheus_client  # noqa: E402
from settings import OperatorSettings, parse  # noqa: E402

from adapters.cache import ClusterCache  # noqa: E402
from adapters.dcgm import DcgmScraper  # noqa: E402
from adapters.engine_api import EngineClient  # noqa: E402
from adapters.engine_metrics import (  # noqa: E402
    DEFAULT_SELECTOR,
    PodScraper,
    PrometheusQuerySource,
    ServiceMetricsCollector,
)
from adapters.kube import Kube, load_config  # noqa: E402
from adapters.store import HistoryStore, MemoryStore, RedisStore  # noqa: E402
from controllers.shells import handlers  # noqa: E402
from controllers.shells.autoscaling import Autoscaler, MetricsSource  # noqa: E402
from controllers.shells.leadership import Leadership, own_identity  # noqa: E402
from controllers.shells.power import PowerManager  # noqa: E402
from controllers.shells.scheduling import Scheduler  # noqa: E402


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with kopf's object reference when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if ref:
            line["object"] = ref
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(settings: OperatorSettings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def build_autoscaler(settings: OperatorSettings) -> Autoscaler:
    """The autoscaler shell: its metrics source (pod scrapes or Prometheus), history store (Redis when
    configured) and decision interval."""
    http = httpx.AsyncClient(timeout=2.0)
    metrics: MetricsSource
    if settings.metrics_source == "prometheus" and settings.prometheus_url:
        metrics = PrometheusQuerySource(
            http, settings.prometheus_url, time.time, selector_template=settings.prometheus_selector or DEFAULT_SELECTOR
        )
    else:
        metrics = ServiceMetricsCollector(PodScraper(http, time.time, url_template=settings.metrics_url_template))
    store: HistoryStore = RedisStore.from_url(settings.redis_url) if settings.redis_url else MemoryStore()
    return Autoscaler(
        metrics=metrics,
        store=store,
        interval_s=settings.autoscale_interval_seconds,
        default_cold_start_s=settings.default_cold_start_seconds,
        forecast_error_window=settings.forecast_error_window,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse(argv)
    configure_logging(settings)
    if settings.kubeconfig:
        # kopf's own client logs in from $KUBECONFIG; keep both clients on the same cluster.
        os.environ["KUBECONFIG"] = settings.kubeconfig
    kube = Kube(load_config(settings.kubeconfig))
    # Every read comes from these watch-fed caches; the standby replicas keep theirs warm for a quick takeover.
    cache = ClusterCache(kube, peering=not settings.standalone, peering_namespace=settings.namespace)
    identity = own_identity()
    priority = settings.priority if settings.priority is not None else random.randint(1, 1_000_000)
    leadership = Leadership(
        cache, None if settings.standalone else settings.peering, identity, priority, namespace=settings.namespace
    )
    engines = EngineClient()
    handlers.RUNTIME = handlers.Runtime(
        kube=kube,
        cache=cache,
        leader=leadership.active,
        namespace=settings.namespace,
        engines=engines,
        scheduler_name=settings.scheduler_name,
        resync_seconds=settings.resync_seconds,
        autoscaler=build_autoscaler(settings) if settings.autoscaler else None,
        deregistration_seconds=settings.deregistration_seconds,
    )
    if settings.power:
        handlers.RUNTIME.power = PowerManager(
            kube,
            cache,
            DcgmScraper(),
            autoscaler=handlers.RUNTIME.autoscaler,
            interval_s=settings.power_interval_seconds,
            leader=leadership.active,
        )
    handlers.register()

    @kopf.on.startup()
    def configure(**kwargs: Any) -> None:
        settings_: kopf.OperatorSettings = kwargs["settings"]
        settings_.posting.level = logging.INFO
        settings_.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="ebbtide.dev")
        settings_.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="ebbtide.dev")
        settings_.peering.lifetime = settings.peering_lifetime_seconds
        settings_.peering.priority = priority
        settings_.watching.server_timeout = 60
        settings_.networking.request_timeout = 30
        # Handlers never need kopf's finalizer: owner references clean up, and user data is never deleted.
        settings_.persistence.finalizer = "ebbtide.dev/kopf-finalizer"

    @kopf.on.login()
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if settings.kubeconfig:
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_via_client(**kwargs)

    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup()
    async def start_caches(**_: Any) -> None:
        # Handlers start only after the startup handlers: they never read a cache that has not listed yet.
        cache.start()
        await cache.wait_synced()
        handlers.listen(cache)
        logging.getLogger("ebbtide").info("caches synced; peering identity %s, priority %d", identity, priority)
        if settings.packer:
            scheduler = Scheduler(
                kube,
                cache,
                leader=leadership.active,
                scheduler_name=settings.scheduler_name,
                checkpoint_deadline_s=settings.checkpoint_deadline_seconds,
                resync_s=settings.packer_resync_seconds,
            )
            scheduler.listen()
            scheduler.notify()
            tasks.append(asyncio.get_running_loop().create_task(scheduler.run_forever()))
        if handlers.RUNTIME is not None and handlers.RUNTIME.power is not None:
            tasks.append(asyncio.get_running_loop().create_task(handlers.RUNTIME.power.run_forever()))

    @kopf.on.cleanup()
    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        cache.stop()
        await engines.close()

    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr="0.0.0.0")
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=settings.namespace is None,
            namespaces=[settings.namespace] if settings.namespace else [],
            standalone=settings.standalone,
            # kopf makes a named peering mandatory, and pauses a standalone operator that has none to read.
            peering_name=None if settings.standalone else settings.peering,
            identity=identity,  # type: ignore[arg-type]  # kopf types it as a NewType of str
            priority=priority,
            liveness_endpoint=liveness,
        )
    )


if __name__ == "__main__":
    main()
