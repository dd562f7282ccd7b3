#!/usr/bin/env python3
"""A stand-in renderer for the Grafana dashboard (helm/ebbtide/dashboards/ebbtide.json), fed by real metrics.

There is no Grafana or Prometheus here: this script scrapes the running demo (operator /metrics, every simulated
engine's vLLM /metrics, every fake node's DCGM exporter) while sending completions, evaluates each panel's
PromQL over the scraped window with a small evaluator (selectors, rate/increase/irate, sum/max/min/avg by,
histogram_quantile: exactly what the dashboard uses), draws the panels as SVG in an HTML page and screenshots
it with headless Chromium.

    python hack/render_dashboard.py --out docs/dashboard.png     # starts `make demo` if it is not running
"""

from __future__ import annotations

import argparse
import asyncio
import html
import io
import itertools
import json
import math
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "helm" / "ebbtide" / "dashboards" / "ebbtide.json"
DEMO = ROOT / ".run" / "demo"
OPERATOR_METRICS = "http://127.0.0.1:18080/metrics"  # hack/demo.sh's --metrics-port
LOOKBACK_S = 300.0  # Prometheus' staleness window for instant selectors

Labels = tuple[tuple[str, str], ...]
Vector = dict[Labels, float]


# ---- PromQL subset: parse -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """`name{label op "value", ...}` with an optional `[range]`."""

    name: str
    matchers: tuple[tuple[str, str, str], ...]
    range_s: float | None = None


@dataclass(frozen=True)
class Call:
    """rate / increase / irate (of a range selector) or histogram_quantile(q, vector)."""

    func: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Aggregate:
    """sum / max / min / avg / count, optionally `by (labels)` or `without (labels)`."""

    op: str
    by: tuple[str, ...] | None
    without: tuple[str, ...] | None
    expr: Any


AGGREGATES = {"sum", "max", "min", "avg", "count"}
FUNCTIONS = {"rate", "increase", "irate", "histogram_quantile"}
_TOKEN = re.compile(
    r'\s*(?:(?P<num>\d+(?:\.\d+)?(?![\w:]))|(?P<dur>\d+(?:ms|s|m|h))|(?P<id>[A-Za-z_:][\w:]*)|(?P<str>"(?:[^"\\]|\\.)*")'
    r"|(?P<op>=~|!~|!=|=|[(){}\[\],]))"
)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class PromQLError(ValueError):
    """A query outside the supported subset, with the reason."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise PromQLError(f"cannot read {text[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def duration_seconds(text: str) -> float:
    """'30s' -> 30.0, '5m' -> 300.0."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not m:
        raise PromQLError(f"bad duration {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i] if self.i < len(self.toks) else ("eof", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise PromQLError(f"expected {value!r}, found {tok[1]!r}")
        self.i += 1
        return tok

    def labels(self) -> tuple[str, ...]:
        self.take("(")
        names = []
        while self.peek()[1] != ")":
            names.append(self.take()[1])
            if self.peek()[1] == ",":
                self.take(",")
        self.take(")")
        return tuple(names)

    def expr(self) -> Any:
        kind, value = self.peek()
        if kind == "num":
            self.take()
            return float(value)
        if kind != "id":
            raise PromQLError(f"unexpected {value!r}")
        if value in AGGREGATES:
            self.take()
            by = without = None
            if self.peek()[1] in ("by", "without"):
                mod = self.take()[1]
                by, without = (self.labels(), None) if mod == "by" else (None, self.labels())
            self.take("(")
            inner = self.expr()
            self.take(")")
            if self.peek()[1] in ("by", "without"):
                mod = self.take()[1]
                by, without = (self.labels(), None) if mod == "by" else (None, self.labels())
            return Aggregate(value, by, without, inner)
        if value in FUNCTIONS:
            self.take()
            self.take("(")
            args = [self.expr()]
            while self.peek()[1] == ",":
                self.take(",")
                args.append(self.expr())
            self.take(")")
            return Call(value, tuple(args))
        return self.selector()

    def selector(self) -> Selector:
        name = self.take()[1]
        matchers = []
        if self.peek()[1] == "{":
            self.take("{")
            while self.peek()[1] != "}":
                label = self.take()[1]
                op = self.take()[1]
                kind, raw = self.take()
                if op not in ("=", "!=", "=~", "!~") or kind != "str":
                    raise PromQLError(f"bad matcher {label}{op}{raw}")
                matchers.append((label, op, json.loads(raw)))
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
        range_s = None
        if self.peek()[1] == "[":
            self.take("[")
            range_s = duration_seconds(self.take()[1])
            self.take("]")
        return Selector(name, tuple(matchers), range_s)


def parse(text: str) -> Any:
    """The query's syntax tree; PromQLError outside the subset."""
    p = _Parser(text)
    node = p.expr()
    if p.peek()[0] != "eof":
        raise PromQLError(f"unexpected {p.peek()[1]!r} after the expression")
    return node


def metric_names(node: Any) -> set[str]:
    """Every metric a query reads (sample names, e.g. vllm:time_to_first_token_seconds_bucket)."""
    if isinstance(node, Selector):
        return {node.name}
    if isinstance(node, Call):
        return {n for a in node.args for n in metric_names(a)}
    if isinstance(node, Aggregate):
        return metric_names(node.expr)
    return set()


def substitute(expr: str, variables: dict[str, str], rate_interval: str) -> str:
    """Grafana's template variables: $__rate_interval and $name / ${name}."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name, value in variables.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


# ---- PromQL subset: evaluate ------------------------------------------------------------------------------------


class Store:
    """Scraped samples: metric name -> label set -> [(time, value)]."""

    def __init__(self) -> None:
        self.series: dict[str, dict[Labels, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))

    def add_text(self, t: float, text: str, extra: dict[str, str]) -> None:
        """Add one scrape in the Prometheus text format, with target labels like a scrape config's."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                labels = tuple(sorted({**s.labels, **extra}.items()))
                self.series[s.name][labels].append((t, float(s.value)))


def _matches(labels: Labels, matchers: tuple[tuple[str, str, str], ...]) -> bool:
    d = dict(labels)
    for name, op, value in matchers:
        have = d.get(name, "")
        ok = {
            "=": have == value,
            "!=": have != value,
            "=~": re.fullmatch(value, have) is not None,
            "!~": re.fullmatch(value, have) is None,
        }[op]
        if not ok:
            return False
    return True


def _counter_delta(points: list[tuple[float, float]]) -> float:
    delta = 0.0
    for (_, a), (_, b) in itertools.pairwise(points):
        delta += b - a if b >= a else b  # a reset starts the counter again from zero
    return delta


def evaluate(node: Any, store: Store, t: float) -> Vector | float:
    """The query's value at time t (a vector, or a scalar for a number literal)."""
    if isinstance(node, float):
        return node
    if isinstance(node, Selector):
        if node.range_s is not None:
            raise PromQLError(f"range selector {node.name} outside rate()")
        out: Vector = {}
        for labels, points in store.series.get(node.name, {}).items():
            if not _matches(labels, node.matchers):
                continue
            recent = [v for ts, v in points if t - LOOKBACK_S < ts <= t]
            if recent:
                out[labels] = recent[-1]
        return out
    if isinstance(node, Call) and node.func in ("rate", "increase", "irate"):
        sel = node.args[0]
        if not isinstance(sel, Selector) or sel.range_s is None:
            raise PromQLError(f"{node.func}() needs a range selector")
        out = {}
        for labels, points in store.series.get(sel.name, {}).items():
            if not _matches(labels, sel.matchers):
                continue
            window = [(ts, v) for ts, v in points if t - sel.range_s < ts <= t]
            if node.func == "irate":
                window = window[-2:]
            if len(window) < 2 or window[-1][0] <= window[0][0]:
                continue
            per_s = _counter_delta(window) / (window[-1][0] - window[0][0])
            out[labels] = per_s * sel.range_s if node.func == "increase" else per_s
        return out
    if isinstance(node, Call) and node.func == "histogram_quantile":
        q = node.args[0]
        vec = evaluate(node.args[1], store, t)
        if not isinstance(q, float) or not isinstance(vec, dict):
            raise PromQLError("histogram_quantile(q, vector)")
        return _histogram_quantile(q, vec)
    if isinstance(node, Aggregate):
        vec = evaluate(node.expr, store, t)
        if not isinstance(vec, dict):
            raise PromQLError(f"{node.op}() of a scalar")
        groups: dict[Labels, list[float]] = defaultdict(list)
        for labels, v in vec.items():
            if node.by is not None:
                key = tuple((k, val) for k, val in labels if k in node.by)
            elif node.without is not None:
                key = tuple((k, val) for k, val in labels if k not in node.without)
            else:
                key = ()
            groups[key].append(v)
        fold = {"sum": sum, "max": max, "min": min, "count": len, "avg": lambda xs: sum(xs) / len(xs)}[node.op]
        return {k: float(fold(vs)) for k, vs in groups.items()}  # type: ignore[operator]
    raise PromQLError(f"unsupported node {node!r}")


def _histogram_quantile(q: float, vec: Vector) -> Vector:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the rank."""
    groups: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
    for labels, v in vec.items():
        d = dict(labels)
        le = d.pop("le", None)
        if le is None:
            continue
        groups[tuple(sorted(d.items()))].append((math.inf if le == "+Inf" else float(le), v))
    out: Vector = {}
    for key, buckets in groups.items():
        buckets.sort()
        total = buckets[-1][1]
        if total <= 0 or buckets[-1][0] != math.inf:
            continue
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if bound == math.inf:
                    out[key] = lower_bound
                elif count == lower_count:
                    out[key] = bound
                else:
                    out[key] = lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
                break
            lower_bound, lower_count = bound, count
    return out


def legend(fmt: str, labels: Labels) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' value."""
    d = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: d.get(m.group(1), ""), fmt) or "value"


# ---- scraping the running demo ----------------------------------------------------------------------------------


def _kube() -> Any:
    sys.path.insert(0, str(ROOT))
    from kubernetes import client

    from controllers.kube import load_config

    return client.CoreV1Api(load_config(str(DEMO / "cluster" / "kubeconfig")))


def ensure_demo() -> None:
    """Start `make demo` (hack/demo.sh) unless its cluster and operator already answer."""
    import httpx

    try:
        httpx.get(OPERATOR_METRICS, timeout=2).raise_for_status()
        if (DEMO / "cluster" / "kubeconfig").exists():
            return
    except httpx.HTTPError:
        pass
    print("starting the demo (hack/demo.sh); its log is .run/demo/demo.log", file=sys.stderr)
    DEMO.mkdir(parents=True, exist_ok=True)
    with open(DEMO / "demo.log", "wb") as log:
        subprocess.run([str(ROOT / "hack" / "demo.sh")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)


def targets(core: Any) -> list[tuple[str, dict[str, str]]]:
    """(metrics URL, target labels) of every engine pod and every fake node's DCGM exporter."""
    out: list[tuple[str, dict[str, str]]] = []
    for pod in core.list_pod_for_all_namespaces(label_selector="ebbtide.dev/service").items:
        url = (pod.metadata.annotations or {}).get("ebbtide.dev/engine-url")
        if url and not pod.metadata.deletion_timestamp:
            labels = {
                "namespace": pod.metadata.namespace,
                "pod": pod.metadata.name,
                "service": pod.metadata.labels["ebbtide.dev/service"],
            }
            out.append((f"{url}/metrics", labels))
    for node in core.list_node().items:
        url = (node.metadata.annotations or {}).get("ebbtide.dev/dcgm-url")
        if url:
            out.append((f"{url}/metrics", {}))
    return out


async def load(core: Any, seconds: float, stop: asyncio.Event) -> int:
    """Completions to every serving entrypoint on this machine, at a rate that rises and falls."""
    import httpx

    pods = [
        p
        for p in core.list_pod_for_all_namespaces(label_selector="ebbtide.dev/entrypoint=true").items
        if (p.metadata.annotations or {}).get("ebbtide.dev/engine-url", "").startswith("http://127.0.0.1:")
    ]
    sent = 0
    rng = random.Random(7)
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=60) as http:
        tasks: set[asyncio.Task[Any]] = set()
        while not stop.is_set() and time.monotonic() - t0 < seconds and pods:
            elapsed = time.monotonic() - t0
            rate = 3.0 + 9.0 * math.sin(math.pi * elapsed / seconds) ** 2  # requests/s across the fleet
            pod = rng.choice(pods)
            body = {
                "model": pod.spec.containers[0].args[pod.spec.containers[0].args.index("--served-model-name") + 1],
                "prompt": "word " * rng.randint(50, 600),
                "max_tokens": rng.randint(16, 96),
            }
            url = pod.metadata.annotations["ebbtide.dev/engine-url"] + "/v1/completions"
            task = asyncio.create_task(http.post(url, json=body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks, return_exceptions=True)
    return sent


async def scrape(core: Any, duration: float, interval: float, record: Path) -> Store:
    """Scrape every target every `interval` seconds while the load runs; keep the raw scrapes in `record`."""
    import httpx

    store, stop = Store(), asyncio.Event()
    load_task = asyncio.create_task(load(core, duration, stop))
    record.parent.mkdir(parents=True, exist_ok=True)
    t_end = time.time() + duration
    async with httpx.AsyncClient(timeout=5) as http:
        with record.open("w") as out:
            while time.time() < t_end:
                t = time.time()
                found = [(OPERATOR_METRICS, {"job": "ebbtide-operator"}), *targets(core)]
                replies = await asyncio.gather(*(http.get(url) for url, _ in found), return_exceptions=True)
                for (_, labels), reply in zip(found, replies, strict=True):
                    if isinstance(reply, httpx.Response) and reply.status_code == 200:
                        store.add_text(t, reply.text, labels)
                        out.write(json.dumps({"t": t, "labels": labels, "text": reply.text}) + "\n")
                await asyncio.sleep(max(0.0, interval - (time.time() - t)))
    stop.set()
    print(f"sent {await load_task} completions; scraped {len(found)} targets", file=sys.stderr)
    return store


def replay(record: Path) -> Store:
    """A store from a recording made by an earlier run."""
    store = Store()
    for line in record.read_text().splitlines():
        row = json.loads(line)
        store.add_text(row["t"], row["text"], row["labels"])
    return store


# ---- drawing ----------------------------------------------------------------------------------------------------


def panel_series(
    panel: dict[str, Any], store: Store, times: list[float], rate_interval: str
) -> dict[str, list[tuple[float, float]]]:
    """legend -> [(time, value)] for every target of the panel."""
    variables = {"namespace": ".*", "service": ".*", "budget": ".*"}
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for target in panel["targets"]:
        node = parse(substitute(target["expr"], variables, rate_interval))
        for t in times:
            vec = evaluate(node, store, t)
            if isinstance(vec, float):
                continue
            for labels, v in sorted(vec.items()):
                if math.isfinite(v):
                    out[legend(target["legendFormat"], labels)].append((t, v))
    return dict(out)


def _unit_format(unit: str) -> tuple[str, float]:
    return {"s": ("seconds", 1.0), "watt": ("W", 1.0), "reqps": ("req/s", 1.0), "ops": ("ops/s", 1.0)}.get(
        unit, ("", 1.0)
    )


def svg_panel(panel: dict[str, Any], series: dict[str, list[tuple[float, float]]], t0: float) -> str:
    """One panel drawn as an inline SVG in Grafana's dark style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 3.3), dpi=100)
    fig.patch.set_facecolor("#181b1f")
    ax.set_facecolor("#181b1f")
    for spine in ax.spines.values():
        spine.set_color("#2c3235")
    ax.tick_params(colors="#9fa7b3", labelsize=8)
    ax.grid(color="#2c3235", linewidth=0.6)
    unit, _ = _unit_format(panel["fieldConfig"]["defaults"].get("unit", ""))
    ax.set_ylabel(unit, color="#9fa7b3", fontsize=8)
    ax.set_xlabel("seconds into the run", color="#9fa7b3", fontsize=8)
    dashed = [re.compile(o["matcher"]["options"]) for o in panel["fieldConfig"].get("overrides", [])]
    stacked = panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    palette = ["#73bf69", "#5794f2", "#f2cc0c", "#b877d9", "#ff9830", "#8ab8ff", "#96d98d", "#ffb357", "#ca95e5"]
    base: dict[float, float] = defaultdict(float)
    color = 0
    for name, points in sorted(series.items()):
        xs = [t - t0 for t, _ in points]
        is_dashed = any(d.fullmatch(name) for d in dashed)
        if is_dashed:
            ax.plot(xs, [v for _, v in points], linestyle="--", linewidth=1.8, color="#f2495c", label=name)
            continue
        ys = [v + (base[t] if stacked else 0.0) for t, v in points]
        c = palette[color % len(palette)]
        color += 1
        if stacked:
            ax.fill_between(xs, [base[t] for t, _ in points], ys, color=c, alpha=0.25, linewidth=0)
            for t, v in points:
                base[t] += v
        ax.plot(xs, ys, linewidth=1.6, color=c, label=name)
    if series:
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#ccccdc",
                  ncol=2 if len(series) > 4 else 1)  # fmt: skip
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color="#9fa7b3", fontsize=14, transform=ax.transAxes)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", facecolor=fig.get_facecolor())
    plt.close(fig)
    return buf.getvalue().split("?>", 1)[-1]


def page(dashboard: dict[str, Any], store: Store, rate_interval: str) -> str:
    """The whole dashboard as an HTML page of SVG panels."""
    stamps = sorted({t for m in store.series.values() for pts in m.values() for t, _ in pts})
    t0 = stamps[0] if stamps else 0.0
    window = duration_seconds(rate_interval)
    times = [t for t in stamps if t - t0 >= window]
    cells = []
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        series = panel_series(panel, store, times, rate_interval)
        missing = sorted(
            name
            for target in panel["targets"]
            for name in metric_names(parse(substitute(target["expr"], {}, rate_interval)))
            if not any(store.series.get(name, {}).values())
        )
        note = (
            f'<div class="note">no samples yet: {", ".join(html.escape(m) for m in missing)}</div>' if missing else ""
        )
        cells.append(
            f'<div class="panel"><div class="title">{html.escape(panel["title"])}</div>'
            f"{svg_panel(panel, series, t0)}{note}</div>"
        )
    span = f"{(stamps[-1] - stamps[0]):.0f} s" if stamps else "no"
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ background:#111217; color:#ccccdc; font-family:'DejaVu Sans',sans-serif; margin:0; padding:16px; }}
h1 {{ font-size:20px; margin:0 0 4px 0; font-weight:500; }}
.sub {{ color:#9fa7b3; font-size:12px; margin-bottom:12px; }}
.grid {{ display:grid; grid-template-columns:1fr 1fr; gap:10px; }}
.panel {{ background:#181b1f; border:1px solid #2c3235; border-radius:3px; padding:6px; }}
.title {{ font-size:13px; font-weight:500; padding:2px 4px 0 4px; }}
.note {{ color:#ff9830; font-size:11px; padding:0 4px; }}
svg {{ width:100%; height:auto; display:block; }}
</style></head><body><h1>{html.escape(dashboard["title"])}</h1>
<div class="sub">Stand-in rendering of helm/ebbtide/dashboards/ebbtide.json (not Grafana) by hack/render_dashboard.py:
{span} of real metrics scraped from the local demo (operator, simulated vLLM engines, simulated DCGM exporters)
under generated load. Namespace, LLMService and PowerBudget: All. Rate window {rate_interval}.</div>
<div class="grid">{"".join(cells)}</div></body></html>"""


def screenshot(html_path: Path, out: Path, height: int) -> None:
    """A PNG of the page from headless Chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("chromium is needed for the screenshot: apt-get install -y chromium")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size=1600,{height}",
             f"--screenshot={out.resolve()}", html_path.resolve().as_uri()],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png", help="PNG to write")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of load and scraping")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes")
    parser.add_argument("--replay", type=Path, help="render a recording of an earlier run instead of scraping")
    parser.add_argument("--stop-demo", action="store_true", help="stop the demo afterwards")
    args = parser.parse_args()
    work = ROOT / ".run" / "dashboard"
    work.mkdir(parents=True, exist_ok=True)
    rate_interval = f"{max(10, int(args.interval * 5))}s"
    if args.replay:
        store = replay(args.replay)
    else:
        ensure_demo()
        store = asyncio.run(scrape(_kube(), args.duration, args.interval, work / "scrapes.jsonl"))
        if args.stop_demo:
            subprocess.run([str(ROOT / "hack" / "demo.sh"), "down"], cwd=ROOT, check=False)
    dashboard = json.loads(DASHBOARD.read_text())
    html_path = work / "dashboard.html"
    html_path.write_text(page(dashboard, store, rate_interval))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"]) // 8
    screenshot(html_path, args.out, 110 + rows * 372)
    print(args.out)


if __name__ == "__main__":
    main()
