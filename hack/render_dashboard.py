"""A stand-in renderer for the Grafana dashboard (helm/ebbtide/dashboards/ebbtide.json), fed by real metrics.

There is no Grafana or Prometheus here. This script starts its own local control plane, operator and simulated
fleet (in .run/dashboard, apart from `make demo`), applies examples/ plus one forecast-autoscaled service, sends
completions at a rising and falling rate, and scrapes the operator's /metrics, every simulated engine's vLLM
/metrics and every fake node's DCGM exporter. It then evaluates each panel's PromQL with a small evaluator
(selectors, rate/increase/irate, sum/max/min/avg/count by, histogram_quantile: what the dashboard uses), draws
the panels as SVG in an HTML page and screenshots that with headless Chromium.

    .venv/bin/python hack/render_dashboard.py --out docs/dashboard.png      # make dashboard-screenshot
    .venv/bin/python hack/render_dashboard.py --replay .run/dashboard/scrapes.jsonl   # redraw the last run
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


# ---- a stack of its own: local control plane, operator, simulated fleet, examples ------------------------------


class Stack:
    """The local control plane in .run/dashboard with the operator and fleet as child processes."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.kubeconfig = Path()
        self.kubectl = ""
        self.metrics_port = 0

    def kc(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            [self.kubectl, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def spawn(self, name: str, argv: list[str]) -> None:
        with open(self.work / f"{name}.log", "ab") as log:
            self.procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))

    def up(self) -> None:
        """Cluster, CRDs, operator (autoscaler reading engines through their engine-url), fleet, examples."""
        cluster = [sys.executable, str(ROOT / "hack" / "cluster.py")]
        out = subprocess.run([*cluster, "up", "--dir", str(self.work / "cluster")], check=True, capture_output=True)
        self.kubeconfig = Path(out.stdout.decode().strip().splitlines()[-1])
        bins = subprocess.run([*cluster, "binaries"], check=True, capture_output=True).stdout.decode().strip()
        self.kubectl = str(Path(bins) / "kubectl")
        self.kc("apply", "-f", str(ROOT / "crds" / "manifests"))
        for _ in range(60):
            if not self.kc("wait", "--for=condition=established", "crd", "--all", "--timeout=10s", check=False):
                time.sleep(1)
                continue
            break
        self.kc("apply", "-f", str(ROOT / "crds" / "peering"), "-f", str(ROOT / "examples" / "priorityclasses.yaml"))
        self.metrics_port = _free_port()
        self.spawn("operator", [
            sys.executable, str(ROOT / "operator" / "main.py"), "--kubeconfig", str(self.kubeconfig),
            "--metrics-port", str(self.metrics_port), "--health-port", str(_free_port()), "--log-format", "plain",
            "--resync-seconds", "3", "--autoscale-interval-seconds", "3", "--metrics-url-template",
            "{engineURL}/metrics",
        ])  # fmt: skip
        self.spawn("fleet", [
            sys.executable, "-m", "simulator.fleet", "--kubeconfig", str(self.kubeconfig),
            "--state-dir", str(self.work / "fleet"), "--cold-start-scale", "20",
        ])  # fmt: skip
        for path in sorted((ROOT / "examples").glob("*.yaml")):
            self.kc("apply", "-f", str(path))
        # One service left to the forecast autoscaler, so the load panel has a forecast to compare with.
        auto = (ROOT / "examples" / "dense-service.yaml").read_text()
        auto = auto.replace("name: llama3-8b", "name: assistant").replace("policy: none ", "policy: forecast ")
        self.kc("apply", "-f", "-", stdin=auto.replace("replicas: 2 ", "replicas: 1 "))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            phases = self.kc("get", "llms", "-o", "jsonpath={.items[*].status.phase}").split()
            if len(phases) >= 4 and all(p == "Ready" for p in phases):
                return
            time.sleep(3)
        raise SystemExit(f"services did not become Ready: {self.kc('get', 'llms')}")

    def down(self, keep: bool) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=30)
        if not keep:
            subprocess.run([sys.executable, str(ROOT / "hack" / "cluster.py"), "down", "--dir",
                            str(self.work / "cluster")], check=False)  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _core(kubeconfig: Path) -> Any:
    sys.path.insert(0, str(ROOT))
    from kubernetes import client

    from adapters.kube import load_config

    return client.CoreV1Api(load_config(str(kubeconfig)))


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


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


def entrypoints(core: Any) -> list[tuple[str, str]]:
    """(completions URL, model) of every Ready serving entrypoint on this machine."""
    out = []
    for p in core.list_pod_for_all_namespaces(label_selector="ebbtide.dev/entrypoint=true").items:
        url = (p.metadata.annotations or {}).get("ebbtide.dev/engine-url", "")
        args = p.spec.containers[0].args or []
        if url.startswith("http://127.0.0.1:") and _ready(p) and "--served-model-name" in args:
            out.append((f"{url}/v1/completions", args[args.index("--served-model-name") + 1]))
    return out


async def load(core: Any, seconds: float, stop: asyncio.Event) -> tuple[int, int]:
    """Completions to every Ready serving entrypoint, at a rate that rises and falls; (sent, failed)."""
    import httpx

    rng = random.Random(7)
    t0 = time.monotonic()
    sent = failed = 0
    pods: list[tuple[str, str]] = []
    refreshed = -math.inf

    def done(task: asyncio.Task[Any]) -> None:
        nonlocal failed
        tasks.discard(task)
        if task.exception() is not None or task.result().status_code != 200:
            failed += 1

    async with httpx.AsyncClient(timeout=60) as http:
        tasks: set[asyncio.Task[Any]] = set()
        while not stop.is_set() and time.monotonic() - t0 < seconds:
            elapsed = time.monotonic() - t0
            if elapsed - refreshed > 5:
                pods, refreshed = await asyncio.to_thread(entrypoints, core), elapsed
            if pods:
                # Requests/s across the fleet: a ramp up and down over the run, like a daily peak.
                rate = 4.0 + 20.0 * math.sin(math.pi * elapsed / seconds) ** 2
                url, model = rng.choice(pods)
                body = {"model": model, "prompt": "word " * rng.randint(50, 600), "max_tokens": rng.randint(16, 96)}
                task = asyncio.create_task(http.post(url, json=body))
                tasks.add(task)
                task.add_done_callback(done)
                sent += 1
            await asyncio.sleep(rng.expovariate(rate) if pods else 1.0)
        await asyncio.gather(*tasks, return_exceptions=True)
    return sent, failed


async def scrape(core: Any, operator: str, duration: float, interval: float, record: Path) -> Store:
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
                found = [(operator, {"job": "ebbtide-operator"}), *await asyncio.to_thread(targets, core)]
                replies = await asyncio.gather(*(http.get(url) for url, _ in found), return_exceptions=True)
                for (_, labels), reply in zip(found, replies, strict=True):
                    if isinstance(reply, httpx.Response) and reply.status_code == 200:
                        store.add_text(t, reply.text, labels)
                        out.write(json.dumps({"t": t, "labels": labels, "text": reply.text}) + "\n")
                await asyncio.sleep(max(0.0, interval - (time.time() - t)))
    stop.set()
    sent, failed = await load_task
    print(f"sent {sent} completions ({failed} failed); scraped {len(found)} targets", file=sys.stderr)
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


def _override_style(override: dict[str, Any]) -> tuple[bool, str | None]:
    """(dashed, fixed colour) from a Grafana field override."""
    props = {p["id"]: p["value"] for p in override["properties"]}
    dashed = props.get("custom.lineStyle", {}).get("fill") == "dash"
    return dashed, props.get("color", {}).get("fixedColor")


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
    styles = [(re.compile(o["matcher"]["options"]), _override_style(o)) for o in panel["fieldConfig"]["overrides"]]
    stacked = panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    palette = ["#73bf69", "#5794f2", "#f2cc0c", "#b877d9", "#ff9830", "#8ab8ff", "#96d98d", "#ffb357", "#ca95e5"]
    base: dict[float, float] = defaultdict(float)
    for i, (name, points) in enumerate(sorted(series.items())):
        xs = [t - t0 for t, _ in points]
        dash, fixed = next((s for rx, s in styles if rx.fullmatch(name)), (False, None))
        color = fixed or palette[i % len(palette)]
        if dash:
            # Targets and limits are drawn as dashed lines over the data, never stacked.
            ax.plot(xs, [v for _, v in points], linestyle="--", linewidth=1.8, color=color, label=name)
            continue
        ys = [v + (base[t] if stacked else 0.0) for t, v in points]
        if stacked:
            ax.fill_between(xs, [base[t] for t, _ in points], ys, color=color, alpha=0.25, linewidth=0)
            for t, v in points:
                base[t] += v
        ax.plot(xs, ys, linewidth=1.6, color=color, label=name)
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
{span} of real metrics scraped from a local stack (operator, simulated vLLM engines, simulated DCGM exporters on
KWOK GPU nodes) under generated load. Namespace, LLMService and PowerBudget: All. Rate window {rate_interval}.
"No data": nothing sets that series yet.</div>
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
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load and scraping")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes")
    parser.add_argument("--replay", type=Path, help="render a recording of an earlier run instead of scraping")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    args = parser.parse_args()
    work = ROOT / ".run" / "dashboard"
    work.mkdir(parents=True, exist_ok=True)
    rate_interval = f"{max(10, int(args.interval * 5))}s"
    if args.replay:
        store = replay(args.replay)
    else:
        stack = Stack(work)
        try:
            print("starting the local control plane, operator and fleet in .run/dashboard", file=sys.stderr)
            stack.up()
            operator = f"http://127.0.0.1:{stack.metrics_port}/metrics"
            record = work / "scrapes.jsonl"
            store = asyncio.run(scrape(_core(stack.kubeconfig), operator, args.duration, args.interval, record))
        finally:
            stack.down(args.keep)
    dashboard = json.loads(DASHBOARD.read_text())
    html_path = work / "dashboard.html"
    html_path.write_text(page(dashboard, store, rate_interval))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"]) // 8
    screenshot(html_path, args.out, 110 + rows * 372)
    print(args.out)


if __name__ == "__main__":
    main()
