"""The power manager's shell: every tick (one second by default, so the emergency path caps within a second)
scrape DCGM on the nodes of every PowerBudget, call the power core, write the caps for the node agents, and
apply each budget's status. Leader only; reads come from the watch-fed caches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adapters import operator_metrics as M
from adapters.cache import ClusterCache
from adapters.dcgm import DCGM_URL_ANNOTATION, DcgmScraper
from adapters.kube import ApiError, FieldManager, Kube, NetworkError
from adapters.nvml import CAPS_ANNOTATION, ENFORCED_ANNOTATION, render_caps
from autoscaler.power import Admission, GPUState, PowerCapper, PowerPlan
from catalogue.gpus import GPU_PROFILES, GPU_RESOURCE
from controllers.planners.conditions import already_applied
from controllers.planners.gangs import gangs_gpus
from controllers.planners.power import (
    GPUSample,
    NodeGPUs,
    Workload,
    budget_status,
    domains,
    gpu_states,
    node_annotations,
    service_caps,
    workload_of,
)
from controllers.shells.autoscaling import Autoscaler, profile_of, slo_of
from crds import labels as L
from crds.llmservice import LLMService
from crds.powerbudget import PowerBudget
from crds.reasons import EventType, Reason

log = logging.getLogger("ebbtide.power")
EVENT_SOURCE = "ebbtide-power"


@dataclass
class PowerManager:
    """Keeps every PowerBudget domain under its watts (autoscaler/power.py decides; this applies)."""

    kube: Kube
    cache: ClusterCache
    scraper: DcgmScraper
    autoscaler: Autoscaler | None = None
    interval_s: float = 1.0
    leader: Callable[[], bool] = lambda: True
    clock: Callable[[], float] = time.time  # wall time: seconds over budget and condition transition times
    capper: PowerCapper = field(default_factory=PowerCapper)
    last: PowerPlan | None = None
    gpus: list[GPUState] = field(default_factory=list)
    _service_caps: dict[str, float | None] = field(default_factory=dict)
    _refusals: dict[str, str] = field(default_factory=dict)  # node -> last NVML refusal text reported
    _annotated: set[str] = field(default_factory=set)  # nodes this manager has written caps on

    def _nodes(self) -> list[NodeGPUs]:
        out = []
        for n in self.cache.nodes.items():
            alloc = (n.get("status") or {}).get("allocatable") or {}
            out.append(
                NodeGPUs(n["metadata"]["name"], n["metadata"].get("labels") or {}, int(alloc.get(GPU_RESOURCE, "0")))
            )
        return out

    def _budgets(self) -> list[tuple[dict[str, Any], PowerBudget]]:
        out = []
        for body in self.cache.powerbudgets.items():
            try:
                out.append((body, PowerBudget.model_validate(body)))
            except ValidationError:
                continue  # the reconciler reports the invalid spec
        return out

    def _workloads(self) -> dict[tuple[str, str], Workload]:
        by_service: dict[str, Workload] = {}
        out: dict[tuple[str, str], Workload] = {}
        for pod in self.cache.pods.items():
            meta = pod["metadata"]
            service = (meta.get("labels") or {}).get(L.SERVICE)
            key = f"{meta['namespace']}/{service}" if service else f"{meta['namespace']}/{meta['name']}"
            priority = int((pod.get("spec") or {}).get("priority") or 0)
            work = by_service.get(key)
            if work is None:
                work = self._workload(key, priority) if service else Workload(key, priority)
                by_service[key] = work
            out[(meta["namespace"], meta["name"])] = work
        return out

    def _workload(self, key: str, priority: int) -> Workload:
        ns, name = key.split("/", 1)
        body = self.cache.object("llmservices", ns, name)
        observed = self.autoscaler.last_observation.get(key) if self.autoscaler else None
        if body is None:
            return workload_of(key, priority, observed, None, None, None)
        try:
            svc = LLMService.model_validate(body)
            profile = profile_of(svc)
        except (ValidationError, ValueError):
            return workload_of(key, priority, observed, None, None, None)
        forecast = ((body.get("status") or {}).get("forecast") or {}).get("p90")
        return workload_of(key, priority, observed, slo_of(svc), profile, forecast)

    async def tick(self, now: float) -> PowerPlan | None:
        """One pass: measure, decide, apply. Returns the plan (None when there is no PowerBudget)."""
        budgets = self._budgets()
        nodes = self._nodes()
        doms = domains([pb for _, pb in budgets], nodes)
        members = {node for d in doms for node, _ in d.members}
        for node in sorted(self._annotated - members):
            # No budget covers the node any more (deleted, or its selector changed): every GPU back to default.
            try:
                await self.kube.annotate_node(node, {CAPS_ANNOTATION: render_caps({})})
                self._annotated.discard(node)
            except (ApiError, *NetworkError) as exc:
                log.warning("cannot lift caps on node %s: %s", node, exc)
        if not budgets:
            self.last = None
            return None
        urls = {
            n["metadata"]["name"]: (n["metadata"].get("annotations") or {}).get(DCGM_URL_ANNOTATION)
            for n in self.cache.nodes.items()
        }
        wanted = sorted(n for n in members if urls.get(n))
        scraped = await asyncio.gather(*(self.scraper.scrape(urls[n] or "") for n in wanted))
        samples: dict[str, list[GPUSample]] = {}
        for node, got in zip(wanted, scraped, strict=True):
            if isinstance(got, str):
                log.warning("DCGM of node %s unavailable: %s", node, got)
            else:
                samples[node] = got
        self.gpus = gpu_states(nodes, samples, self._workloads())
        plan = self.capper.tick(now, doms, self.gpus)
        self.last = plan
        for node, caps in node_annotations(plan, self.gpus).items():
            try:
                await self.kube.annotate_node(node, {CAPS_ANNOTATION: render_caps(caps)})
                self._annotated.add(node)
                M.POWER_CAP_CHANGES.inc(
                    sum(1 for g in self.gpus if g.node == node and plan.caps.get(g.key) != g.limit_w)
                )
            except (ApiError, *NetworkError) as exc:
                log.warning("cannot write caps on node %s: %s", node, exc)
        for body, pb in budgets:
            await self._write_budget(body, pb, plan, now)
        await self._write_services(plan)
        await self._report_refusals(budgets, plan)
        for g in self.gpus:
            M.POWER_CAP.labels(g.node, str(g.index), str(g.priority)).set(plan.caps.get(g.key) or 0.0)
        return plan

    async def _write_budget(self, body: dict[str, Any], pb: PowerBudget, plan: PowerPlan, now: float) -> None:
        d = plan.domains[pb.metadata.name]
        previous = body.get("status") or {}
        status, events = budget_status(previous, d, now, pb.metadata.generation)
        name = pb.metadata.name
        M.POWER_DRAWN.labels(name).set(d.drawn_w)
        M.POWER_FORECAST.labels(name).set(d.forecast_w)
        M.POWER_HEADROOM.labels(name).set(d.headroom_w)
        M.POWER_OVER_SECONDS.labels(name).set(d.seconds_over)
        for type_, reason, message in events:
            await self.kube.create_event(body, type_, reason, message[:1000], EVENT_SOURCE)
        if not already_applied(previous, status):
            try:
                await self.kube.apply_status("powerbudgets", None, name, status, FieldManager.POWER)
            except (ApiError, *NetworkError) as exc:
                log.warning("cannot write PowerBudget %s status: %s", name, exc)

    async def _write_services(self, plan: PowerPlan) -> None:
        caps = service_caps(plan, self.gpus)
        for key in set(self._service_caps) | set(caps):
            cap = caps.get(key)
            if key in self._service_caps and self._service_caps[key] == cap:
                continue
            ns, name = key.split("/", 1)
            if self.cache.object("llmservices", ns, name) is None:
                self._service_caps.pop(key, None)
                continue
            try:
                # Server-side apply: leaving the field out releases it, which removes it (uncapped).
                body = {} if cap is None else {"powerCapWatts": cap}
                await self.kube.apply_status("llmservices", ns, name, body, FieldManager.POWER)
                self._service_caps[key] = cap
            except (ApiError, *NetworkError) as exc:
                log.warning("cannot write powerCapWatts of %s: %s", key, exc)

    async def _report_refusals(self, budgets: list[tuple[dict[str, Any], PowerBudget]], plan: PowerPlan) -> None:
        for n in self.cache.nodes.items():
            node = n["metadata"]["name"]
            answer = (n["metadata"].get("annotations") or {}).get(ENFORCED_ANNOTATION) or ""
            if '"error"' not in answer or self._refusals.get(node) == answer:
                continue
            self._refusals[node] = answer
            for body, pb in budgets:
                d = plan.domains.get(pb.metadata.name)
                if d is not None and any(k[0] == node for k in d.caps):
                    message = f"node {node}: the agent reports NVML refusals: {answer}"
                    await self.kube.create_event(
                        body, EventType.WARNING, Reason.NVML_REFUSED, message[:1000], EVENT_SOURCE
                    )

    def admit(self, svc: LLMService, replicas: int, now_replicas: int) -> Admission | None:
        """Whether `replicas - now_replicas` more gangs of the service fit its power domains (None: no domain)."""
        if self.last is None or replicas <= now_replicas:
            return None
        key = f"{svc.metadata.namespace}/{svc.metadata.name}"
        mine = {g.key for g in self.gpus if g.workload == key}
        priority = next((g.priority for g in self.gpus if g.workload == key), 0)
        gpu = next((p for p in GPU_PROFILES.values() if p.short_name in svc.spec.gpu.types), None)
        watts = gpu.tdp_w if gpu is not None else max(p.tdp_w for p in GPU_PROFILES.values())
        extra = (replicas - now_replicas) * gangs_gpus(svc.spec)
        for name, d in sorted(self.last.domains.items()):
            if not mine & set(d.caps):
                continue
            answer = self.last.admit(name, extra, watts, priority)
            if not answer.allowed:
                return answer
        return None

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if self.leader():
                try:
                    await self.tick(self.clock())
                except Exception:
                    log.exception("power tick failed")
            await asyncio.sleep(max(0.05, self.interval_s - (loop.time() - started)))
