"""Demo part 2: replay a slice of the Azure LLM 2023 conversation trace through the gateway to a
forecast-autoscaled LLMService and print demand, forecast band and replicas as they evolve.

The trace is the busiest ten minutes shipped in simulator/data (no download needed).

Run by hack/demo.sh with the demo cluster's KUBECONFIG; needs the operator and simulated fleet running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from aiohttp import web
from kubernetes import client as kclient
from kubernetes import config as kconfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.loadgen.gateway import Gateway, KubernetesBackends  # noqa: E402
from simulator.loadgen.replay import ReplayConfig, replay  # noqa: E402
from simulator.traces import SLICES, Trace, load_azure  # noqa: E402

SERVICE = """
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {name: chat, namespace: default}
spec:
  model: {name: llama-3-8b, source: hf://meta-llama/Meta-Llama-3-8B-Instruct, parametersB: 8}
  engine: {type: simulated}
  gpu: {count: 1, types: [L4]}
  replicas: 1
  scaling:
    minReplicas: 1
    maxReplicas: 4
    policy: forecast
    scaleDownStabilizationSeconds: 20
    slo: {ttftSeconds: 2.0, interTokenLatencySeconds: 0.1}
"""


def kubectl(kubectl_bin: str, kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [kubectl_bin, "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True, text=True, check=True
    ).stdout


def shaped_slice(compress: float, seconds: float, scale: float) -> Trace:
    """The busiest stretch of the shipped conv slice, compressed, with lengths scaled down for an L4."""
    whole = load_azure("conv", SLICES)
    span = seconds * compress
    # A replay longer than the slice plays all of it.
    edges = np.arange(0, whole.duration_s, span)
    start = float(np.argmax(np.histogram(whole.arrival_s, bins=edges)[0]) * span) if len(edges) > 1 else 0.0
    part = whole.window(start, start + span)
    return Trace(
        "azure-conv-slice",
        part.arrival_s,
        np.maximum(1, (part.prompt_tokens * scale).astype(np.int64)),
        np.maximum(1, (part.output_tokens * scale).astype(np.int64)),
        part.duration_s,
    )


def _num(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else "-"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--kubectl", required=True)
    p.add_argument("--seconds", type=float, default=90.0, help="wall seconds of replay")
    p.add_argument("--compress", type=float, default=1.5, help="trace seconds per replay second")
    args = p.parse_args()
    kubectl(args.kubectl, args.kubeconfig, "apply", "-f", "-", stdin=SERVICE)
    print("== waiting for the first replica of llms/chat to be Ready")
    while True:
        raw = await asyncio.to_thread(kubectl, args.kubectl, args.kubeconfig, "get", "llms", "chat", "-o", "json")
        if (json.loads(raw).get("status") or {}).get("readyReplicas", 0) >= 1:
            break
        await asyncio.sleep(1.0)
    trace = shaped_slice(args.compress, args.seconds, 0.25)
    api = kclient.CoreV1Api(kconfig.new_client_from_config(config_file=args.kubeconfig))
    gateway = Gateway(KubernetesBackends("chat", "default", api), refresh_s=1.0)
    runner = web.AppRunner(gateway.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"== replaying {len(trace)} Azure conv requests over {args.seconds:.0f}s through the gateway :{port}")
    header = f"{'t':>5} {'observed rps':>12} {'forecast p50':>12} {'p90':>6} {'p99':>6} {'replicas':>8} {'ready':>5}"
    print(header + "  reason")
    task = asyncio.create_task(
        replay(trace, ReplayConfig(target=f"http://127.0.0.1:{port}", model="llama-3-8b", compress=args.compress))
    )
    t0 = time.monotonic()
    while not task.done():
        await asyncio.sleep(3.0)
        # The replay shares this event loop: never block it.
        raw = await asyncio.to_thread(kubectl, args.kubectl, args.kubeconfig, "get", "llms", "chat", "-o", "json")
        obj = json.loads(raw)
        st, fc = obj.get("status") or {}, (obj.get("status") or {}).get("forecast") or {}
        async with httpx.AsyncClient(timeout=2.0) as http:
            metrics = (await http.get("http://127.0.0.1:18080/metrics")).text
        observed = next(
            (
                f"{float(ln.split()[-1]):.2f}"
                for ln in metrics.splitlines()
                if ln.startswith("ebbtide_observed_requests_per_second{")
            ),
            "-",
        )
        print(
            f"{time.monotonic() - t0:5.0f} {observed:>12} {_num(fc.get('p50')):>12} {_num(fc.get('p90')):>6} "
            f"{_num(fc.get('p99')):>6} {obj['spec']['replicas']:>8} {st.get('readyReplicas', 0):>5}  "
            f"{(fc.get('reason') or '')[:60]}"
        )
    records = task.result()
    ok = sum(r.ok for r in records)
    print(f"== {ok}/{len(records)} requests succeeded")
    errors = Counter((r.error or f"HTTP {r.status}")[:100] for r in records if not r.ok)
    for error, n in errors.most_common(3):
        print(f"   {n} x {error}")
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
