"""Scale benchmark: the operator on a KWOK cluster of many GPU nodes, services and FineTuneJobs applied in bursts.

Run: .venv/bin/python -m bench.scale --nodes 200 --services 100 --jobs 20 [--burst 50] [--label small]
Starts a local control plane (hack/cluster.py) with `--nodes` fake GPU nodes (half H100, a quarter each A100 and L4;
4 nodes a rack, 2 racks a zone), the simulated fleet and one operator. Services (1, 2, 8 and 16 GPUs a replica, the
16-GPU ones a gang over two nodes) and FineTuneJobs are applied in bursts of `--burst` objects. A watch records, on
this process's clock, when each gang's first pod appears and when its last pod is bound, and when each service
first reports Ready, from the apply of its burst. Meanwhile it samples the RSS and CPU of the operator and of the
control plane (from /proc) and the operator's reconcile queue (backlog and in flight, from its /metrics), then
reads the API server's request counters (`apiserver_request_total`) over the burst phase and over an idle window
after it, and the operator's packer decision histogram. Writes bench/results/scale-LABEL.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes import watch as kwatch

from bench.idle_api import Counts, Kubectl, delta, free_port, parse_requests, start, stop, wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUN = ROOT / ".run"
NS = "scale"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
BUCKET = re.compile(r'^ebbtide_packer_decision_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)
SUM_COUNT = re.compile(r"^ebbtide_packer_decision_duration_seconds_(sum|count) (\S+)$", re.M)
# (GPUs a replica, perNode, tensor, pipeline, share of services): the mix of shapes a platform serves.
SHAPES = ((1, 8, 1, 1, 0.6), (2, 8, 2, 1, 0.25), (8, 8, 8, 1, 0.1), (16, 8, 8, 2, 0.05))
TYPES = (["H100", "A100", "L4"], ["H100", "A100"], ["H100"], ["A100"], ["L4"])


def log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def service(i: int) -> dict[str, Any]:
    """Service `i` of the mix: its shape by share, its GPU types in turn; policy none so placement is what is
    measured (the autoscaler's cost is the idle-API benchmark's)."""
    cut, shape = (i * 0.6180339887) % 1.0, SHAPES[0]  # golden-ratio steps: every prefix holds the mix
    acc = 0.0
    for s in SHAPES:
        acc += s[4]
        if cut < acc:
            shape = s
            break
    gpus, per_node, tp, pp, _ = shape
    types = TYPES[i % len(TYPES)] if gpus < 16 else ["H100"]
    types = ["H100", "A100"] if gpus >= 2 and types == ["L4"] else types  # L4s hold the 1B model's tp=1 only
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": f"svc-{i:04d}"},
        "spec": {
            "model": {"name": "tiny-1b", "source": "hf://example/tiny-1b", "parametersB": 1},
            "engine": {"type": "simulated"},
            "gpu": {"count": gpus, "perNode": per_node, "types": types},
            "parallelism": {"tensor": tp, "pipeline": pp},
            "replicas": 1,
            "scaling": {"minReplicas": 1, "maxReplicas": 2, "policy": "none"},
        },
    }


def job(i: int) -> dict[str, Any]:
    """A LoRA FineTuneJob on 1 or 4 GPUs that runs for the whole benchmark (its gang stays bound)."""
    gpus = 4 if i % 4 == 0 else 1
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"ftj-{i:03d}"},
        "spec": {
            "baseModel": {"name": "tiny-1b", "source": "hf://example/tiny-1b", "parametersB": 1},
            "dataset": {"uri": "s3://datasets/d.jsonl"},
            "method": "lora",
            "hyperparameters": {"rank": 8, "totalSteps": 100000},
            "gpu": {"count": gpus, "types": ["A100", "H100"]},
            "trainer": {"type": "simulated", "stepSeconds": 1.0},
            "priorityClassName": "ebbtide-batch-low",
            "preemptible": True,
        },
    }


@dataclass
class Observed:
    """What the watches saw, on this process's monotonic clock."""

    applied: dict[str, float] = field(default_factory=dict)  # object name -> its burst's apply
    gang_members: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    gang_size: dict[str, int] = field(default_factory=dict)
    gang_owner: dict[str, str] = field(default_factory=dict)
    bound_pods: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    gang_bound: dict[str, float] = field(default_factory=dict)
    gang_created: dict[str, float] = field(default_factory=dict)  # its first pod seen: the operator's share ends
    ready: dict[str, float] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)  # object name -> its watch's first sight of it
    lock: threading.Lock = field(default_factory=threading.Lock)


def watch_pods(api: kclient.CoreV1Api, seen: Observed, stop_: threading.Event) -> None:
    w = kwatch.Watch()
    for ev in w.stream(api.list_namespaced_pod, NS, timeout_seconds=0, _request_timeout=None):
        now = time.monotonic()
        pod = ev["object"]
        labels, ann = pod.metadata.labels or {}, pod.metadata.annotations or {}
        gang = labels.get("ebbtide.dev/gang")
        if gang is None:
            continue
        owner = labels.get("ebbtide.dev/service") or labels.get("ebbtide.dev/finetune") or gang
        with seen.lock:
            seen.gang_owner.setdefault(gang, owner)
            seen.gang_created.setdefault(gang, now)
            seen.gang_size[gang] = int(ann.get("ebbtide.dev/gang-size", "1"))
            seen.gang_members[gang].add(pod.metadata.name)
            if pod.spec.node_name:
                seen.bound_pods[gang].add(pod.metadata.name)
            if gang not in seen.gang_bound and len(seen.bound_pods[gang]) >= seen.gang_size[gang]:
                seen.gang_bound[gang] = now
        if stop_.is_set():
            w.stop()


def watch_objects(api: kclient.CustomObjectsApi, plural: str, seen: Observed, stop_: threading.Event) -> None:
    """When the API server accepted each object (its first watch event) and, for services, first reported Ready."""
    w = kwatch.Watch()
    for ev in w.stream(api.list_namespaced_custom_object, "ebbtide.dev", "v1alpha1", NS, plural,
                       timeout_seconds=0, _request_timeout=None):  # fmt: skip
        now, obj = time.monotonic(), ev["object"]
        conds = (obj.get("status") or {}).get("conditions") or []
        with seen.lock:
            seen.accepted.setdefault(obj["metadata"]["name"], now)
            if plural == "llmservices" and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                seen.ready.setdefault(obj["metadata"]["name"], now)
        if stop_.is_set():
            w.stop()


def proc_sample(pid: int) -> tuple[float, float]:
    """(RSS MB, CPU seconds) of a process and its children's threads (utime + stime)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return rss / 1024, (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sampler:
    """Samples RSS and CPU of named processes every second on a thread."""

    pids: dict[str, int]
    peak_rss: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    stop_: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop_.wait(1.0):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic()
        for name, pid in self.pids.items():
            rss, cpu = proc_sample(pid)
            self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), rss)
            self.cpu[name].append((now, cpu))

    def cpu_between(self, name: str, t0: float, t1: float) -> float:
        """Mean CPU cores the process used between t0 and t1."""
        pts = [(t, c) for t, c in self.cpu[name] if t0 <= t <= t1]
        if len(pts) < 2:
            return 0.0
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


QUEUE = re.compile(r'^ebbtide_(reconcile_backlog|reconciles_in_flight)\{kind="([^"]+)"\} (\S+)$', re.M)


@dataclass
class QueueSampler:
    """Samples the operator's reconcile queue (ebbtide_reconcile_backlog, ebbtide_reconciles_in_flight) every
    second from its /metrics."""

    url: str
    series: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    stop_: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop_.wait(1.0):
            try:
                text = httpx.get(self.url, timeout=5).text
            except httpx.HTTPError:
                continue
            values: dict[str, float] = defaultdict(float)
            for metric, _kind, v in QUEUE.findall(text):
                values[metric] += float(v)  # summed over kinds
            self.series.append((time.monotonic(), dict(values)))

    def summary(self, t0: float, t1: float) -> dict[str, Any]:
        """Peak and mean of each gauge between t0 and t1, and how long the backlog took to drain to zero."""
        pts = [(t, v) for t, v in self.series if t0 <= t <= t1]
        out: dict[str, Any] = {}
        for metric in ("reconcile_backlog", "reconciles_in_flight"):
            xs = [v.get(metric, 0.0) for _, v in pts]
            out[metric] = {"peak": max(xs, default=0.0), "mean": round(float(np.mean(xs)), 2) if xs else 0.0}
        busy = [t for t, v in pts if v.get("reconcile_backlog", 0.0) > 0]
        out["backlog_nonzero_s"] = round(len(busy) * 1.0, 1)
        out["backlog_zero_after_s"] = round(max(busy) - t0, 1) if busy else 0.0
        return out


DURATION = re.compile(r"^apiserver_request_duration_seconds_(sum|count)\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M)
VERB = re.compile(r'(?:^|,)verb="([^"]+)"')


def api_latency(text: str) -> dict[str, tuple[float, float]]:
    """apiserver_request_duration_seconds (sum, count) by verb: the API server's own view of its latency."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for m in DURATION.finditer(text):
        verb = VERB.search(m.group("labels"))
        if verb is not None:
            out[verb.group(1)][0 if m.group(1) == "sum" else 1] += float(m.group("value"))
    return {v: (sc[0], sc[1]) for v, sc in out.items()}


def mean_latency(after: dict[str, tuple[float, float]], before: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean seconds per request by verb between two readings (long-running WATCH and CONNECT left out)."""
    out = {}
    for verb, (s1, n1) in after.items():
        s0, n0 = before.get(verb, (0.0, 0.0))
        if verb not in ("WATCH", "CONNECT") and n1 > n0:
            out[verb] = round((s1 - s0) / (n1 - n0), 4)
    return out


OWN = re.compile(r'^ebbtide_api_requests_total\{resource="([^"]+)",verb="([^"]+)"\} (\S+)$', re.M)


def operator_requests(metrics_url: str) -> Counts:
    """The operator's own API requests by (verb, resource): its facade's writes and its caches' lists and watches
    (ebbtide_api_requests_total; kopf's own requests are not in it)."""
    text = httpx.get(metrics_url, timeout=10).text
    return {(verb, resource): float(v) for resource, verb, v in OWN.findall(text)}


def packer_decisions(metrics_url: str) -> dict[str, float]:
    """Count, mean and the bucket bounds holding p50 and p99 of the packer's decision time."""
    text = httpx.get(metrics_url, timeout=10).text
    sc = {k: float(v) for k, v in SUM_COUNT.findall(text)}
    buckets = [(float(le), float(n)) for le, n in BUCKET.findall(text)]
    count = sc.get("count", 0.0)
    out = {"count": count, "mean_s": sc.get("sum", 0.0) / count if count else float("nan")}
    for q in (0.5, 0.99):
        out[f"p{int(q * 100)}_le_s"] = next((le for le, n in buckets if count and n >= q * count), float("inf"))
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def rates_table(counts: Counts, seconds: float, top: int = 15) -> list[dict[str, Any]]:
    rows = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [{"verb": v, "resource": r, "per_s": round(n / seconds, 2)} for (v, r), n in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--burst", type=int, default=50, help="objects applied at once")
    p.add_argument("--gap", type=float, default=5.0, help="seconds between bursts")
    p.add_argument("--idle-window", type=float, default=60.0, help="seconds of the idle API window")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for every gang bound")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for every service Ready")
    p.add_argument("--resync-seconds", type=float, default=10.0, help="the operator's periodic reconcile (its default)")
    p.add_argument("--label", default="small")
    p.add_argument("--keep-cluster", action="store_true")
    p.add_argument("--namespace", default="scale", help="where the objects go (a fresh one on a kept cluster)")
    args = p.parse_args()
    global NS
    NS = args.namespace

    state = RUN / "scale-cluster"
    cluster_py = ROOT / "hack" / "cluster.py"
    t_up = time.monotonic()
    up = subprocess.run([sys.executable, str(cluster_py), "up", "--dir", str(state), "--nodes", str(args.nodes)],
                        check=True, stdout=subprocess.PIPE, text=True)  # fmt: skip
    cluster_up_s = time.monotonic() - t_up
    kubeconfig = Path(up.stdout.strip().splitlines()[-1])
    bins = subprocess.run([sys.executable, str(cluster_py), "binaries"], check=True, stdout=subprocess.PIPE, text=True)
    kubectl = Kubectl(str(Path(bins.stdout.strip()) / "kubectl"), kubeconfig)
    kubectl("apply", "-f", str(ROOT / "crds" / "manifests"))
    wait_for(
        "CRDs established",
        lambda: kubectl.ok("wait", "--for", "condition=established", "crd", "--all", "--timeout=30s"),
        120,
    )
    kubectl("apply", "-f", str(ROOT / "crds" / "peering"))
    kubectl("apply", "-f", str(ROOT / "examples" / "priorityclasses.yaml"))
    kubectl("create", "namespace", NS, check=False)
    # A new node is Ready before the controller manager lifts its not-ready taint, and it lifts them a few a second
    # (its own API rate limit): at 2,000 nodes that takes minutes, during which no gang may land there.
    t_taint = time.monotonic()
    wait_for("every node schedulable (not-ready taint lifted)", lambda: not_ready_tainted(kubectl) == 0, 1800)
    schedulable_after_s = time.monotonic() - t_taint
    log(f"all {args.nodes} nodes schedulable {schedulable_after_s:.0f}s after Ready")

    metrics_port = free_port()
    fleet = start(
        "scale-fleet",
        [
            sys.executable,
            "-m",
            "simulator.fleet",
            "--kubeconfig",
            str(kubeconfig),
            "--state-dir",
            str(RUN / "scale-fleet"),
            "--cold-start-scale",
            "100",
        ],
        ROOT,
    )
    operator = start("scale-operator", [
        sys.executable, str(ROOT / "operator" / "main.py"), "--kubeconfig", str(kubeconfig),
        "--metrics-port", str(metrics_port), "--health-port", str(free_port()), "--log-format", "plain",
        "--no-autoscaler", "--resync-seconds", str(args.resync_seconds),
    ], ROOT)  # fmt: skip
    pids = {"operator": operator.pid, "fleet": fleet.pid}
    pids |= {c: int((state / f"{c}.pid").read_text()) for c in CONTROL_PLANE if (state / f"{c}.pid").exists()}
    sampler = Sampler(pids)
    threading.Thread(target=sampler.run, daemon=True).start()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    wait_for("operator metrics", lambda: _up(metrics_url), 120)
    queue = QueueSampler(metrics_url)
    threading.Thread(target=queue.run, daemon=True).start()

    api_client = kconfig.new_client_from_config(config_file=str(kubeconfig))
    seen, stop_ = Observed(), threading.Event()
    threading.Thread(target=watch_pods, args=(kclient.CoreV1Api(api_client), seen, stop_), daemon=True).start()
    for plural in ("llmservices", "finetunejobs"):
        threading.Thread(target=watch_objects, args=(kclient.CustomObjectsApi(api_client), plural, seen, stop_),
                         daemon=True).start()  # fmt: skip
    time.sleep(2.0)

    latencies: list[dict[str, tuple[float, float]]] = []

    def api_counts() -> Counts:
        text = kubectl("get", "--raw", "/metrics")
        latencies.append(api_latency(text))
        return parse_requests(text)

    # The jobs spread evenly among the services, so every burst holds both kinds.
    every = max(1, args.services // max(1, args.jobs))
    objects: list[dict[str, Any]] = []
    jobs = [job(i) for i in range(args.jobs)]
    for i in range(args.services):
        objects.append(service(i))
        if i % every == every - 1 and jobs:
            objects.append(jobs.pop(0))
    objects += jobs
    gangs_expected = len(objects)
    try:
        c0, t0, o0 = api_counts(), time.monotonic(), operator_requests(metrics_url)
        for b in range(0, len(objects), args.burst):
            burst = objects[b : b + args.burst]
            now = time.monotonic()
            kubectl(
                "apply", "-n", NS, "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": burst})
            )
            for o in burst:
                seen.applied[o["metadata"]["name"]] = now
            log(f"applied {b + len(burst)}/{len(objects)}; gangs bound so far {len(seen.gang_bound)}")
            time.sleep(args.gap)

        def all_bound() -> bool:
            with seen.lock:
                n = len(seen.gang_bound)
            log(f"gangs bound {n}/{gangs_expected}, services Ready {len(seen.ready)}/{args.services}")
            return n >= gangs_expected

        wait_for("every gang bound", all_bound, args.timeout)
        # Ready is the simulated fleet's pace (it runs every engine in one process): a run whose fleet falls
        # behind still reports its placement figures, and says how many services were Ready.
        try:
            wait_for("every service Ready", lambda: len(seen.ready) >= args.services, args.ready_timeout)
        except SystemExit as e:
            log(f"{e}; {len(seen.ready)}/{args.services} Ready: going on")
        t1, c1, o1 = time.monotonic(), api_counts(), operator_requests(metrics_url)
        time.sleep(15.0)
        t2, c2, o2 = time.monotonic(), api_counts(), operator_requests(metrics_url)
        time.sleep(args.idle_window)
        t3, c3, o3 = time.monotonic(), api_counts(), operator_requests(metrics_url)
        packer = packer_decisions(metrics_url)
        sampler.sample()
    finally:
        stop_.set()
        sampler.stop_.set()
        queue.stop_.set()
        stop(operator)
        stop(fleet)
        kubectl("delete", "namespace", NS, "--wait=false", check=False)
        if not args.keep_cluster:
            subprocess.run([sys.executable, str(cluster_py), "down", "--dir", str(state)], check=False)

    with seen.lock:
        bound = [seen.gang_bound[g] - seen.applied[seen.gang_owner[g]]
                 for g in seen.gang_bound if seen.gang_owner[g] in seen.applied]  # fmt: skip
        ready = [t - seen.applied[n] for n, t in seen.ready.items() if n in seen.applied]
        created_to_bound = [t - seen.gang_created[g] for g, t in seen.gang_bound.items()]
        owners = {g: seen.gang_owner[g] for g in seen.gang_bound if seen.gang_owner[g] in seen.accepted}
        accepted_to_bound = [seen.gang_bound[g] - seen.accepted[o] for g, o in owners.items()]
        accepted_to_pod = [seen.gang_created[g] - seen.accepted[o] for g, o in owners.items()]
        accepted_to_ready = [t - seen.accepted[n] for n, t in seen.ready.items() if n in seen.accepted]
    burst_s, idle_s = t1 - t0, t3 - t2
    result = {
        "label": args.label,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "host": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "resync_s": args.resync_seconds,
        "nodes": args.nodes,
        "services": args.services,
        "jobs": args.jobs,
        "burst": args.burst,
        "gap_s": args.gap,
        "cluster_up_s": round(cluster_up_s, 1),
        "taints_lifted_after_ready_s": round(schedulable_after_s, 1),
        "gangs": len(bound),
        "services_ready": len(ready),
        "apply_to_bound_s": {"p50": pct(bound, 50), "p99": pct(bound, 99), "max": max(bound, default=float("nan"))},
        "created_to_bound_s": {"p50": pct(created_to_bound, 50), "p99": pct(created_to_bound, 99)},
        # From the API server accepting the object, not from kubectl starting its burst (which sends the objects
        # one after another): the operator's share (to the first pod) and the whole way to bound.
        "accepted_to_pod_s": {"p50": pct(accepted_to_pod, 50), "p99": pct(accepted_to_pod, 99)},
        "accepted_to_bound_s": {
            "p50": pct(accepted_to_bound, 50),
            "p99": pct(accepted_to_bound, 99),
            "max": max(accepted_to_bound, default=float("nan")),
        },
        "accepted_to_ready_s": {"p50": pct(accepted_to_ready, 50), "p99": pct(accepted_to_ready, 99)},
        "apply_to_ready_s": {"p50": pct(ready, 50), "p99": pct(ready, 99), "max": max(ready, default=float("nan"))},
        "burst_phase_s": round(burst_s, 1),
        "peak_rss_mb": {k: round(v, 1) for k, v in sampler.peak_rss.items()},
        "cpu_cores_burst": {k: round(sampler.cpu_between(k, t0, t1), 3) for k in pids},
        "cpu_cores_idle": {k: round(sampler.cpu_between(k, t2, t3), 3) for k in pids},
        "api_per_s_burst": rates_table(delta(c1, c0), burst_s),
        "api_per_s_idle": rates_table(delta(c3, c2), idle_s),
        "operator_api_per_s_burst": rates_table(delta(o1, o0), burst_s),
        "operator_api_per_s_idle": rates_table(delta(o3, o2), idle_s),
        "operator_api_total_per_s": {
            "burst": round(sum(delta(o1, o0).values()) / burst_s, 2),
            "idle": round(sum(delta(o3, o2).values()) / idle_s, 2),
        },
        # latencies[0] and [1] are read with c0 and c1: the burst phase.
        "api_latency_burst_s": mean_latency(latencies[1], latencies[0]),
        "api_latency_idle_s": mean_latency(latencies[3], latencies[2]),
        "api_total_per_s": {
            "burst": round(sum(delta(c1, c0).values()) / burst_s, 2),
            "idle": round(sum(delta(c3, c2).values()) / idle_s, 2),
        },
        "packer_decision": packer,
        "reconcile_queue": queue.summary(t0, t1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"scale-{args.label}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


def not_ready_tainted(kubectl: Kubectl) -> int:
    """Nodes still carrying node.kubernetes.io/not-ready."""
    out = kubectl("get", "nodes", "-o", "jsonpath={range .items[*]}{.spec.taints[*].key}{'\\n'}{end}")
    return sum("node.kubernetes.io/not-ready" in line for line in out.splitlines())


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
