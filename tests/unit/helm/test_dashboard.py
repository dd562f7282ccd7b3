"""The Grafana dashboard queries only metrics that something really exports, and the stand-in renderer that
draws docs/dashboard.png evaluates those queries the way Prometheus does."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from types import ModuleType
from typing import Any

import prometheus_client
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from adapters import operator_metrics as M  # registers the operator's metrics in the default registry
from autoscaler.cluster import ClusterForecast
from controllers.shells.handlers import CLUSTER_SERIES, FORECAST_QUANTILES, publish_cluster_forecast
from simulator.engine.config import parse_args
from simulator.engine.server import create_app
from simulator.fleet import dcgm
from tests.helmchart import CHART, find, render
from tests.kube import ROOT

DASHBOARD: dict[str, Any] = json.loads((CHART / "dashboards" / "ebbtide.json").read_text())
REQUIRED = {
    "ebbtide_desired_replicas", "ebbtide_ready_replicas", "ebbtide_forecast_requests_per_second",
    "ebbtide_observed_requests_per_second", "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket", "ebbtide_slo_ttft_seconds", "ebbtide_slo_itl_seconds",
    "DCGM_FI_DEV_POWER_USAGE", "ebbtide_power_budget_watts", "ebbtide_preemptions_total", "ebbtide_pending_gangs",
    "ebbtide_cluster_forecast", "ebbtide_cluster_observed",
}  # fmt: skip


def renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_dashboard", ROOT / "hack" / "render_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_dashboard"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


R = renderer()


def exprs() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]


def queried_metrics() -> set[str]:
    return {n for e in exprs() for n in R.metric_names(R.parse(R.substitute(e, {}, "30s")))}


def sample_names(families: Any) -> set[str]:
    """Sample names a scrape can carry, including those of labelled families with no children yet."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    return {f.name + s for f in families for s in suffixes.get(f.type, [""])}


async def engine_metrics() -> set[str]:
    app = create_app(parse_args(["--model", "llama-3-8b", "--gpu", "H100", "--port", "0"]))
    async with TestClient(TestServer(app)) as client:
        text = await (await client.get("/metrics")).text()
    return sample_names(text_string_to_metric_families(text))


def test_dashboard_covers_replicas_load_latency_power_and_placement() -> None:
    assert REQUIRED <= queried_metrics()
    assert [p["title"] for p in DASHBOARD["panels"]][:5] == [
        "Replicas: desired vs ready", "Load: forecast vs observed", "Time to first token vs SLO",
        "Inter-token latency vs SLO", "GPU power vs budget",
    ]  # fmt: skip


async def test_every_queried_metric_is_exported_by_the_operator_the_engine_or_dcgm() -> None:
    operator = sample_names(prometheus_client.REGISTRY.collect())
    engine = await engine_metrics()
    reading = dcgm.gpu_reading(0, "NVIDIA-H100-80GB-HBM3", {"draw_w": 400.0}, ("ns", "pod"))
    node = sample_names(text_string_to_metric_families(dcgm.render("gpu-0", "NVIDIA-H100-80GB-HBM3", [reading])))
    unexported = queried_metrics() - operator - engine - node
    assert not unexported, f"the dashboard queries metrics nothing exports: {sorted(unexported)}"
    assert "vllm:time_to_first_token_seconds_bucket" in engine and "DCGM_FI_DEV_POWER_USAGE" in node


def test_forecast_panels_select_the_quantiles_the_operator_publishes() -> None:
    """Label values are strings: a selector for quantile "0.9" draws nothing when the operator says "p90"."""
    for q in FORECAST_QUANTILES:
        M.FORECAST_RPS_FOR.labels("default", "chat", q).set(3.0)
    levels = {0.1: 1.0, 0.5: 2.0, 0.9: 3.0, 0.99: 4.0}
    publish_cluster_forecast(
        ClusterForecast(0.0, 210.0, 1, 0, dict.fromkeys(CLUSTER_SERIES, 2.0), dict.fromkeys(CLUSTER_SERIES, levels))
    )
    store = R.Store()
    for t in (0.0, 10.0):
        store.add_text(t, prometheus_client.generate_latest().decode(), {})
    drawn: dict[str, set[str]] = {}
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            expr = R.substitute(target["expr"], {"namespace": ".*", "service": ".*", "budget": ".*"}, "30s")
            if "forecast" in expr:
                out = R.evaluate(R.parse(expr), store, 10.0)
                drawn[panel["title"]] = {dict(labels).get("quantile", "") for labels in out}
    assert drawn["Load: forecast vs observed"] >= {"p50", "p90"}
    assert drawn["Cluster demand: forecast vs observed"] == {"p50", "p90", "p99"}


def test_queries_use_only_defined_variables_and_every_panel_has_a_unit() -> None:
    defined = {v["name"] for v in DASHBOARD["templating"]["list"]} | {"__rate_interval"}
    used = {m for e in exprs() for m in re.findall(r"\$\{?(\w+)", e)}
    assert used <= defined, used - defined
    for panel in DASHBOARD["panels"]:
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["description"], panel["title"]


def test_chart_ships_the_dashboard_as_a_grafana_sidecar_config_map() -> None:
    cm = find(render(), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["ebbtide.json"]) == DASHBOARD
    assert not [o for o in render("dashboards.enabled=false") if o["metadata"]["name"].endswith("-dashboard")]


def store_with(series: dict[str, list[tuple[dict[str, str], list[tuple[float, float]]]]]) -> Any:
    store = R.Store()
    for name, rows in series.items():
        for labels, points in rows:
            store.series[name][tuple(sorted(labels.items()))] = points
    return store


def test_rate_handles_counter_resets_and_sum_by_groups() -> None:
    store = store_with({"req_total": [
        ({"service": "a", "pod": "1"}, [(0.0, 0.0), (10.0, 20.0), (20.0, 5.0)]),  # reset after 20: +20, +5
        ({"service": "a", "pod": "2"}, [(0.0, 0.0), (20.0, 10.0)]),
        ({"service": "b", "pod": "3"}, [(0.0, 0.0), (20.0, 40.0)]),
    ]})  # fmt: skip
    out = R.evaluate(R.parse("sum by (service) (rate(req_total[30s]))"), store, 20.0)
    assert out == {(("service", "a"),): pytest.approx(25 / 20 + 10 / 20), (("service", "b"),): 2.0}
    inc = R.evaluate(R.parse('increase(req_total{service="b"}[30s])'), store, 20.0)
    assert list(inc.values()) == [pytest.approx(60.0)]


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [("0.1", 50.0), ("0.5", 90.0), ("1.0", 100.0), ("+Inf", 100.0)]
    store = store_with({"lat_bucket": [({"le": le, "service": "a"}, [(0.0, 0.0), (10.0, c)]) for le, c in buckets]})
    q = "histogram_quantile({q}, sum by (le, service) (rate(lat_bucket[20s])))"
    p50 = R.evaluate(R.parse(q.format(q=0.5)), store, 10.0)
    p70 = R.evaluate(R.parse(q.format(q=0.7)), store, 10.0)
    assert p50[(("service", "a"),)] == pytest.approx(0.1)
    assert p70[(("service", "a"),)] == pytest.approx(0.1 + 0.4 * (70 - 50) / (90 - 50))


def test_renderer_refuses_queries_outside_its_subset() -> None:
    with pytest.raises(R.PromQLError):
        R.parse("sum(rate(x[1m])) / 2")
    with pytest.raises(R.PromQLError):
        R.evaluate(R.parse("x[1m]"), R.Store(), 0.0)


def test_power_panel_draws_one_series_per_node_before_and_after_dcgm_exporters_hostname_rename() -> None:
    """dcgm-exporter up to 4.5.3-4.8.2 labels the host `Hostname`, later builds `hostname`: a fleet that mixes
    them (a rolling upgrade of the exporter DaemonSet) must still draw every node, once, under its own name."""
    panel = next(p for p in DASHBOARD["panels"] if p["title"] == "GPU power vs budget")
    target = next(t for t in panel["targets"] if "DCGM_FI_DEV_POWER_USAGE" in t["expr"])
    store = R.Store()
    for node, label in (("gpu-old", dcgm.HOSTNAME_LABEL), ("gpu-new", dcgm.HOSTNAME_LABEL_RENAMED)):
        readings = [dcgm.gpu_reading(i, "NVIDIA-H100-80GB-HBM3", {"draw_w": 300.0}, ("ns", f"p{i}")) for i in (0, 1)]
        for t in (0.0, 10.0):
            store.add_text(t, dcgm.render(node, "NVIDIA-H100-80GB-HBM3", readings, hostname_label=label), {})
    out = R.evaluate(R.parse(R.substitute(target["expr"], {}, "30s")), store, 10.0)
    drawn = {R.legend(target["legendFormat"], labels): value for labels, value in out.items()}
    assert drawn == {"gpu-old": pytest.approx(600.0), "gpu-new": pytest.approx(600.0)}
