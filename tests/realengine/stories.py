"""What the real-engine stories share: the LLMService of the tiny model, a gateway over its ready pods, a steady
load through it, and the tier's timings (printed and appended to .run/realengine/timings.jsonl)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiohttp import web
from kubernetes import client as kclient
from kubernetes import config as kconfig

from simulator.loadgen.gateway import Gateway, KubernetesBackends
from tests.conformance.engines import START_TIMEOUT_S, RealEngineEnv
from tests.kube import ROOT

SERVED = "tiny-llama"
TIMINGS = ROOT / ".run" / "realengine" / "timings.jsonl"
# A server start costs 40-80 CPU-seconds; two at once on a loaded 2-core machine take several times that.
READY_TIMEOUT_S = START_TIMEOUT_S


def find_trainer_env() -> Path | None:
    """The venv of hack/trainer-env.sh (peft beside the real-engine venv), when it is built."""
    found = subprocess.run(
        ["bash", str(ROOT / "hack" / "trainer-env.sh"), "--check"], capture_output=True, text=True, check=False
    )
    return Path(found.stdout.strip().splitlines()[-1]) if found.returncode == 0 else None


def note(what: str, seconds: float) -> None:
    """One measured duration of the tier, kept for the docs' figures."""
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    with open(TIMINGS, "a") as f:
        f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "what": what, "seconds": round(seconds, 1)}))
        f.write("\n")
    print(f"[realengine] {what}: {seconds:.1f} s")


def service_yaml(
    env: RealEngineEnv,
    name: str,
    *,
    replicas: int = 1,
    scaling: str = "{policy: none}",
    drain_grace_s: int = 30,
    extra_args: tuple[str, ...] = (),
    model: Path | None = None,
) -> str:
    """An LLMService of the tiny model (or `model`) on the real vLLM. Its weights are `pvc://<model folder>`, which
    the fleet finds in its models folder; the args are the CPU build's (float32, eager, a short context)."""
    args = ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager", *extra_args]
    # parametersB is the tiny model's size rounded up (0.7M parameters); the catalogue profiles it on an L4.
    return f"""
apiVersion: ebbtide.dev/v1alpha1
kind: LLMService
metadata: {{name: {name}}}
spec:
  model: {{name: {SERVED}, source: "pvc://{(model or env.model).name}", parametersB: 0.001}}
  engine: {{type: vllm, args: {json.dumps(args)}}}
  gpu: {{count: 1, types: [L4]}}
  replicas: {replicas}
  drainGracePeriodSeconds: {drain_grace_s}
  scaling: {scaling}
"""


@contextlib.contextmanager
def gateway(kubeconfig: Path, namespace: str, service: str) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """The loadgen gateway over the service's ready pods, on its own event loop thread; yields (URL, loop)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="gateway")
    thread.start()
    api = kclient.CoreV1Api(kconfig.new_client_from_config(config_file=str(kubeconfig)))
    runner = web.AppRunner(Gateway(KubernetesBackends(service, namespace, api), refresh_s=0.5).app())

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield f"http://127.0.0.1:{port}", loop
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@dataclass(frozen=True)
class Outcome:
    """One request of a steady load: sent when, HTTP status, tokens asked and got, the finish reason."""

    sent_s: float
    status: int
    max_tokens: int
    tokens: int = 0
    finish: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Answered in full: an aborted generation (finish_reason "abort", fewer tokens) is a failure."""
        return self.status == 200 and self.tokens == self.max_tokens and self.finish == "length"


async def _one(http: httpx.AsyncClient, url: str, sent: float, max_tokens: int) -> Outcome:
    body = {
        "model": SERVED,
        "prompt": "The tide goes out and the boats rest on the sand",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
    }
    try:
        r = await http.post(f"{url}/v1/completions", json=body)
    except httpx.HTTPError as e:
        return Outcome(sent, 0, max_tokens, error=f"{type(e).__name__}: {e}")
    if r.status_code != 200:
        return Outcome(sent, r.status_code, max_tokens, error=r.text[:300])
    data = r.json()
    choice = data["choices"][0]
    return Outcome(sent, 200, max_tokens, int(data["usage"]["completion_tokens"]), choice.get("finish_reason"))


async def steady_load(url: str, rate: float, stop: threading.Event, max_tokens: int = 32) -> list[Outcome]:
    """Requests at `rate` per second, evenly spaced and sent whether or not earlier ones finished, until `stop`."""
    t0 = time.monotonic()
    tasks: list[asyncio.Task[Outcome]] = []
    async with httpx.AsyncClient(timeout=120.0) as http:
        i = 0
        while not stop.is_set():
            sent = time.monotonic() - t0
            tasks.append(asyncio.create_task(_one(http, url, sent, max_tokens)))
            i += 1
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        return list(await asyncio.gather(*tasks))


def failures(outcomes: list[Outcome]) -> str:
    bad = [o for o in outcomes if not o.ok]
    return f"{len(bad)} of {len(outcomes)} failed" + (f", e.g. {bad[:3]}" if bad else "")
