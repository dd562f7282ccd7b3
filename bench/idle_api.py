"""API requests per second of an idle operator: the kube-apiserver's own count, with and without the operator.

Run: .venv/bin/python -m bench.idle_api [--services 50] [--window 60] [--tree PATH] [--label after]
Starts a local control plane (hack/cluster.py) with the simulated fleet, starts the operator from `--tree` (this
checkout by default, or an exported older commit for a before/after comparison), applies `--services` one-replica
LLMServices on the simulated engine and waits until every one is Ready. Then it reads `apiserver_request_total`
from the API server's /metrics at the start and end of two windows: one with the operator running (after a settle
period), one after the operator has stopped (the cluster's background: fleet, kwok, controllers). The difference
per (verb, resource) is the operator's traffic. Writes bench/results/idle-api-LABEL.json and prints a markdown table.

Keep both windows within the first five minutes of the local cluster: kwok's node heartbeats arrive later than the
controller manager's --node-monitor-grace-period (300 s), so it then marks every pod NotReady (NodeNotReady), and
the operator rightly reconciles that. The run fails when a service leaves Ready during the operator's window.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUN = ROOT / ".run"
SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')
Counts = dict[tuple[str, str], float]
FIELDS = ("verb", "resource", "with_operator", "background", "operator")


def log(msg: str) -> None:
    print(f"[idle-api] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(2.0)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Path) -> None:
        self.argv = [binary, "--kubeconfig", str(kubeconfig)]

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run([*self.argv, *args], input=stdin, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def ok(self, *args: str) -> bool:
        return subprocess.run([*self.argv, *args], capture_output=True, timeout=120).returncode == 0


def parse_requests(text: str) -> Counts:
    """apiserver_request_total summed by (verb, resource[/subresource] with its API group)."""
    out: Counts = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group("labels")))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        if labels.get("group"):
            resource += "." + labels["group"]
        key = (labels.get("verb", ""), resource or "(non-resource)")
        out[key] = out.get(key, 0.0) + float(m.group("value"))
    return out


def delta(after: Counts, before: Counts) -> Counts:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def service_manifest(name: str) -> dict[str, Any]:
    """A one-replica service of a small model on any GPU type, autoscaled by the default (forecast) policy."""
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny-1b", "source": "hf://example/tiny-1b", "parametersB": 1},
            "engine": {"type": "simulated"},
            "gpu": {"count": 1, "types": ["H100", "A100", "L4"]},
            "replicas": 1,
            "scaling": {"minReplicas": 1, "maxReplicas": 2},
        },
    }


def ready_count(kubectl: Kubectl, ns: str) -> int:
    items = json.loads(kubectl("get", "llms", "-n", ns, "-o", "json"))["items"]
    ready = 0
    for obj in items:
        st = obj.get("status") or {}
        cond: dict[str, Any] = next((c for c in st.get("conditions", []) if c.get("type") == "Ready"), {})
        ready += cond.get("status") == "True" and st.get("readyReplicas") == 1
    return ready


def start(name: str, argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    (RUN / "idle-api-logs").mkdir(parents=True, exist_ok=True)
    logf = open(RUN / "idle-api-logs" / f"{name}.log", "ab")
    return subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def table(operator: Counts, background: Counts, seconds: float) -> list[tuple[str, str, float, float, float]]:
    """Rows (verb, resource, with operator/s, background/s, operator's own/s), largest share first."""
    rows = []
    for key in sorted(set(operator) | set(background)):
        on, off = operator.get(key, 0.0) / seconds, background.get(key, 0.0) / seconds
        rows.append((key[0], key[1], on, off, on - off))
    return sorted(rows, key=lambda r: (-r[4], r[0], r[1]))


def markdown(rows: list[tuple[str, str, float, float, float]]) -> str:
    lines = ["| verb | resource | with operator /s | background /s | operator /s |", "|---|---|---:|---:|---:|"]
    for verb, resource, on, off, own in rows:
        if abs(own) >= 0.005 or on >= 0.005:
            lines.append(f"| {verb} | {resource} | {on:.2f} | {off:.2f} | {own:+.2f} |")
    total_on, total_off = sum(r[2] for r in rows), sum(r[3] for r in rows)
    lines.append(f"| **all** | | **{total_on:.2f}** | **{total_off:.2f}** | **{total_on - total_off:+.2f}** |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=50)
    p.add_argument("--window", type=float, default=60.0, help="seconds per measurement window")
    p.add_argument("--settle", type=float, default=30.0, help="seconds between all Ready and the first window")
    p.add_argument("--tree", type=Path, default=ROOT, help="source tree whose operator/main.py runs")
    p.add_argument("--label", default="after", help="names the results file: bench/results/idle-api-LABEL.json")
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--keep-cluster", action="store_true")
    args = p.parse_args()
    tree = args.tree.resolve()

    state = RUN / "idle-api-cluster"
    cluster_py = ROOT / "hack" / "cluster.py"
    up = subprocess.run(
        [sys.executable, str(cluster_py), "up", "--dir", str(state), "--nodes", str(args.nodes)],
        check=True, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    kubeconfig = Path(up.stdout.strip().splitlines()[-1])
    bins = subprocess.run([sys.executable, str(cluster_py), "binaries"], check=True, stdout=subprocess.PIPE, text=True)
    kubectl = Kubectl(str(Path(bins.stdout.strip()) / "kubectl"), kubeconfig)
    kubectl("apply", "-f", str(tree / "crds" / "manifests"))
    wait_for(
        "CRDs established",
        lambda: kubectl.ok("wait", "--for", "condition=established", "crd", "--all", "--timeout=30s"),
        120,
    )
    kubectl("apply", "-f", str(tree / "crds" / "peering"))
    kubectl("apply", "-f", str(tree / "examples" / "priorityclasses.yaml"))

    fleet = start("fleet", [sys.executable, "-m", "simulator.fleet", "--kubeconfig", str(kubeconfig),
                            "--state-dir", str(RUN / "idle-api-fleet"), "--cold-start-scale", "100"], ROOT)  # fmt: skip
    operator = start("operator-" + args.label, [
        sys.executable, str(tree / "operator" / "main.py"), "--kubeconfig", str(kubeconfig),
        "--metrics-port", str(free_port()), "--health-port", str(free_port()), "--log-format", "plain",
    ], tree)  # fmt: skip
    ns = "idle-api"
    try:
        kubectl("create", "namespace", ns, check=False)
        manifests = [service_manifest(f"svc-{i:02d}") for i in range(args.services)]
        listing = {"apiVersion": "v1", "kind": "List", "items": manifests}
        kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(listing))
        log(f"waiting for {args.services} services to be Ready")
        wait_for(f"{args.services} services Ready", lambda: ready_count(kubectl, ns) == args.services, 600)
        log(f"all Ready; settling {args.settle:.0f}s")
        time.sleep(args.settle)

        def sample() -> tuple[float, Counts]:
            return time.monotonic(), parse_requests(kubectl("get", "--raw", "/metrics"))

        t0, c0 = sample()
        time.sleep(args.window)
        t1, c1 = sample()
        if operator.poll() is not None:
            raise SystemExit("the operator exited during the measurement; see .run/idle-api-logs")
        if ready_count(kubectl, ns) != args.services:
            # Then the window held reconciles of real changes, not an idle operator (see the module docstring).
            raise SystemExit("services left Ready during the window: the cluster was not idle; measure again")
        stop(operator)
        time.sleep(15.0)  # let the operator's watches end and their counts land before the background window
        t2, c2 = sample()
        time.sleep(args.window)
        t3, c3 = sample()
    finally:
        stop(operator)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
        stop(fleet)
        if not args.keep_cluster:
            subprocess.run([sys.executable, str(cluster_py), "down", "--dir", str(state)], check=False)

    on, off = delta(c1, c0), delta(c3, c2)
    # Normalise both windows to the same length so the subtraction is per second.
    rows = table({k: v * args.window / (t1 - t0) for k, v in on.items()},
                 {k: v * args.window / (t3 - t2) for k, v in off.items()}, args.window)  # fmt: skip
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result = {
        "label": args.label,
        "commit": commit.stdout.strip() or "exported tree",
        "services": args.services,
        "window_s": args.window,
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "rows": [dict(zip(FIELDS, r, strict=True)) for r in rows],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"idle-api-{args.label}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
