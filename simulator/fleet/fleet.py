"""The fleet process: watches pods on fake GPU nodes and runs a simulated engine per pod, or a real `vllm serve`
for pods of `engine: vllm` when it is given the real-engine venv (simulator/fleet/real.py)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from kubernetes import client, watch

from adapters.kube import load_config
from adapters.nvml import CAPS_ANNOTATION, ENFORCED_ANNOTATION, CapApplier, parse_caps, render_reports
from catalogue.gpus import GPU_PRODUCT_LABEL, GPU_PROFILES, GPU_RESOURCE
from catalogue.power import demand_w
from crds import labels as L
from simulator.engine.config import EngineConfigError, parse_args, runtime_lora_updating
from simulator.engine.server import ENGINE_KEY, TRAINER_KEY, create_app, shutdown
from simulator.fleet import dcgm
from simulator.fleet.nvml import SimulatedNvml
from simulator.fleet.real import (
    RealEngineError,
    RealProcess,
    container_env,
    readiness_probe,
    trainer_argv,
    vllm_argv,
)
from simulator.fleet.rewrite import engine_argv, local_path

log = logging.getLogger("fleet")
DCGM_URL = "ebbtide.dev/dcgm-url"
DEFAULT_GRACE_S = 30.0  # Kubernetes' default terminationGracePeriodSeconds


@dataclass(frozen=True)
class FleetSettings:
    """How the fleet plays its nodes."""

    state_dir: Path
    engine_time_scale: float = 1.0
    cold_start_scale: float = 30.0
    image_pull_seconds: float = 60.0
    load_gbps: float = 2.0
    vllm_env: Path | None = None  # a venv with the real vLLM (bin/vllm): engine=vllm pods run it for real
    models_dir: Path | None = None  # the local folder that stands for the engine pods' /models mount
    trainer_env: Path | None = None  # a venv that imports peft (hack/trainer-env.sh): engine=peft pods run trainer/
    # Where simulated engines and DCGM endpoints listen and are announced: an operator in a real node's pod reaches
    # the host at the node's IP, never at the host's 127.0.0.1.
    engine_host: str = "127.0.0.1"


@dataclass
class RunningEngine:
    """One pod's engine."""

    namespace: str
    name: str
    node: str
    url: str
    gpus: list[int]
    trainer: bool
    runner: web.AppRunner | None = None
    task: asyncio.Task[None] | None = None
    process: RealProcess | None = None  # a real engine's process
    ready: bool = False  # the readiness the fleet last reported (and re-asserts, as the kubelet's status manager)
    grace_s: float = 30.0  # the pod's terminationGracePeriodSeconds


@dataclass
class NodeState:
    """A fake GPU node: its product, which GPU index belongs to which pod, its DCGM endpoint, its NVML and the
    node agent's apply step (the same `CapApplier` the real agent runs on nvidia-ml-py)."""

    name: str
    product: str
    gpus: int
    nvml: SimulatedNvml
    agent: CapApplier
    owner: dict[int, str] = field(default_factory=dict)  # gpu index -> pod key
    runner: web.AppRunner | None = None
    caps_seen: str | None = None  # the caps annotation last applied


REPO_ROOT = str(Path(__file__).resolve().parents[2])


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """Acts as the kubelet of simulated-engine pods on KWOK nodes."""

    def __init__(self, settings: FleetSettings, kubeconfig: str | None) -> None:
        self.s = settings
        self.api = load_config(kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.engines: dict[str, RunningEngine] = {}
        self.nodes: dict[str, NodeState] = {}
        self.http = httpx.AsyncClient(timeout=2.0)
        self._next_ip = 0
        self.pod_ips: dict[str, str] = {}
        self.terminating: set[asyncio.Task[None]] = set()
        self.processes: set[RealProcess] = set()  # every real engine process not yet reaped
        engines = "simulated" + (",vllm" if settings.vllm_env else "") + (",peft" if settings.trainer_env else "")
        self.selector = f"{L.ENGINE} in ({engines})"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        stop = threading.Event()

        def pump() -> None:
            # The official client's watch is blocking; it lives in its own thread and feeds the loop.
            while not stop.is_set():
                try:
                    w = watch.Watch()
                    for ev in w.stream(
                        self.core.list_pod_for_all_namespaces,
                        label_selector=self.selector,
                        timeout_seconds=60,
                        _preload_content=False,
                    ):
                        obj = ev["raw_object"]
                        loop.call_soon_threadsafe(queue.put_nowait, (ev["type"], obj))
                except Exception as e:
                    log.warning("pod watch restarting: %s", e)
                    stop.wait(1.0)

        def pump_nodes() -> None:
            # The node agent's half: each fake node's desired caps arrive as an annotation on the node.
            while not stop.is_set():
                try:
                    w = watch.Watch()
                    for ev in w.stream(
                        self.core.list_node,
                        label_selector="kwok.x-k8s.io/node=fake",
                        timeout_seconds=60,
                        _preload_content=False,
                    ):
                        loop.call_soon_threadsafe(queue.put_nowait, ("NODE", ev["raw_object"]))
                except Exception as e:
                    log.warning("node watch restarting: %s", e)
                    stop.wait(1.0)

        threading.Thread(target=pump, daemon=True, name="pod-watch").start()
        threading.Thread(target=pump_nodes, daemon=True, name="node-watch").start()
        main = asyncio.current_task()
        if main is not None:
            # SIGTERM ends the fleet through the finally below, which takes its real engines with it.
            loop.add_signal_handler(signal.SIGTERM, main.cancel)
        log.info("fleet started; state in %s; pods selected by %s", self.s.state_dir, self.selector)
        try:
            while True:
                kind, pod = await queue.get()
                try:
                    await self.handle(kind, pod)
                except Exception:
                    log.exception("handling pod %s failed", pod.get("metadata", {}).get("name"))
        finally:
            stop.set()
            # A real engine holds a GiB of memory and its own process session: none may outlive the fleet.
            for process in self.processes:
                process.kill()

    async def handle(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "NODE":
            await self.node_caps(pod)
            return
        meta, spec = pod["metadata"], pod.get("spec", {})
        key = f"{meta['namespace']}/{meta['name']}"
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            grace = meta.get("deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds"))
            await self.stop(key, DEFAULT_GRACE_S if grace is None else float(grace))
            return
        node = spec.get("nodeName")
        if key in self.engines:
            await self.reassert_ready(self.engines[key], pod)
            return
        if not node:
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        state = await self.node(node)
        if state is None:
            return
        await self.start(key, pod, state)

    async def node(self, name: str) -> NodeState | None:
        if name in self.nodes:
            return self.nodes[name]
        obj = await asyncio.to_thread(self.core.read_node, name)
        labels = (obj.metadata.labels if obj.metadata else None) or {}
        if labels.get("kwok.x-k8s.io/node") != "fake":
            return None
        gpus = int(((obj.status.allocatable if obj.status else None) or {}).get(GPU_RESOURCE, "0"))
        product = labels.get(GPU_PRODUCT_LABEL, "NVIDIA-H100-80GB-HBM3")
        nvml = SimulatedNvml(GPU_PROFILES.get(product, GPU_PROFILES["NVIDIA-H100-80GB-HBM3"]), gpus)
        state = NodeState(name, product, gpus, nvml, CapApplier(nvml))
        nvml.draw_w = lambda i: self.gpu_demand_w(state, i)
        nvml.on_change = lambda i, _w: self.limit_changed(state, i)
        self.nodes[name] = state
        await self.serve_dcgm(state)
        return state

    async def node_caps(self, obj: dict[str, Any]) -> None:
        """Apply the caps the operator wrote on a node through its simulated NVML; answer the enforced limits."""
        meta = obj.get("metadata", {})
        annotation = (meta.get("annotations") or {}).get(CAPS_ANNOTATION)
        state = self.nodes.get(meta.get("name", ""))
        if state is None:
            if annotation is None:
                return
            state = await self.node(meta["name"])
            if state is None:
                return
        if annotation == state.caps_seen:
            return
        state.caps_seen = annotation
        reports = state.agent.apply(parse_caps(annotation), asyncio.get_running_loop().time())
        for r in reports:
            if r.error:
                log.warning("node %s GPU %d: %s", state.name, r.index, r.error)
        await asyncio.to_thread(
            self.core.patch_node,
            state.name,
            {"metadata": {"annotations": {ENFORCED_ANNOTATION: render_reports(reports)}}},
        )

    def _engine_app(self, key: str | None) -> web.Application | None:
        eng = self.engines.get(key) if key else None
        return eng.runner.app if eng is not None and eng.runner is not None else None

    def gpu_demand_w(self, node: NodeState, index: int) -> float:
        """What GPU `index` would draw with no limit: its engine's power activity on the board's power curve."""
        app = self._engine_app(node.owner.get(index))
        gpu = node.nvml.gpu
        if app is None:
            return gpu.idle_w
        engine = app.get(ENGINE_KEY)
        if engine is not None:
            return demand_w(gpu, engine.utilization())
        trainer = app[TRAINER_KEY]
        return demand_w(gpu, 0.0 if trainer.done else 1.0)

    def limit_changed(self, node: NodeState, index: int) -> None:
        """A GPU's limit moved: its engine runs at the tightest limit among its GPUs (a TP step waits for all)."""
        key = node.owner.get(index)
        app = self._engine_app(key)
        eng = self.engines.get(key) if key else None
        if app is None or eng is None:
            return
        limits = [node.nvml.limit_w(i) for i in eng.gpus]
        capped = [w for w in limits if w is not None]
        worker = app.get(ENGINE_KEY) or app[TRAINER_KEY]
        worker.set_power_limit(min(capped) if capped else None)

    async def reassert_ready(self, eng: RunningEngine, pod: dict[str, Any]) -> None:
        """Puts back the readiness the engine has when another writer changed it: the node controller marks a
        node's pods NotReady when kwok's heartbeat lags on a loaded machine, and a kubelet would re-sync."""
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        conditions = (pod.get("status") or {}).get("conditions") or []
        shown = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        if shown != eng.ready:
            log.info("pod %s: Ready was set to %s by another writer; back to %s", eng.name, shown, eng.ready)
            await self.patch_status(eng.namespace, eng.name, ready=eng.ready)

    def claim_gpus(self, key: str, container: dict[str, Any], node: NodeState) -> list[int]:
        want = int((container.get("resources", {}).get("limits") or {}).get(GPU_RESOURCE, "0"))
        free = [i for i in range(node.gpus) if i not in node.owner]
        gpus = free[:want]
        for i in gpus:
            node.owner[i] = key
        return gpus

    def next_pod_ip(self, key: str) -> None:
        # Endpoints reject loopback addresses, so each pod gets a unique fake IP (as kwok gives its pods); the
        # engine itself is reached through the ebbtide.dev/engine-url annotation.
        self._next_ip += 1
        self.pod_ips[key] = f"10.244.{self._next_ip // 250}.{self._next_ip % 250 + 1}"

    async def start(self, key: str, pod: dict[str, Any], node: NodeState) -> None:
        if pod["metadata"].get("labels", {}).get(L.ENGINE) == "vllm":
            await self.start_real(key, pod, node)
            return
        if pod["metadata"].get("labels", {}).get(L.ENGINE) == "peft":
            await self.start_trainer(key, pod, node)
            return
        ns, name = key.split("/", 1)
        container = pod["spec"]["containers"][0]
        gpus = self.claim_gpus(key, container, node)
        port = _free_port()
        argv = engine_argv(
            list(container.get("args", [])), node.product, port, self.s.state_dir, self.s.engine_time_scale
        )
        argv += ["--models-root", str(self.s.state_dir / "storage" / "pvc")]
        try:
            cfg = parse_args(argv)
            # The pod's environment, not the fleet's: VLLM_ALLOW_RUNTIME_LORA_UPDATING is set per pod.
            cfg = replace(cfg, runtime_lora_updating=runtime_lora_updating(container_env(container, pod)))
        except EngineConfigError as e:
            log.warning("pod %s: engine refuses its command line: %s", key, e)
            await self.patch_status(ns, name, failed=str(e))
            return
        url = f"http://{self.s.engine_host}:{port}"
        self.next_pod_ip(key)
        eng = RunningEngine(ns, name, node.name, url, gpus, cfg.mode == "trainer")
        self.engines[key] = eng
        await asyncio.to_thread(
            self.core.patch_namespaced_pod, name, ns, {"metadata": {"annotations": {L.ENGINE_URL: url}}}
        )
        await self.patch_status(ns, name, ready=False)
        eng.task = asyncio.get_running_loop().create_task(self.lifecycle(key, eng, cfg))

    async def lifecycle(self, key: str, eng: RunningEngine, cfg: Any) -> None:
        """Cold start, serve, report readiness; for trainers, report completion."""
        perf = cfg.perf_model()
        cold = perf.cold_start_seconds(self.s.image_pull_seconds, self.s.load_gbps)
        await asyncio.sleep(cold / self.s.cold_start_scale)
        app = create_app(cfg)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, self.s.engine_host, cfg.port).start()
        eng.runner = runner
        node = self.nodes.get(eng.node)
        if node is not None and eng.gpus:
            self.limit_changed(node, eng.gpus[0])  # GPUs capped while idle slow the engine from its start
        for _ in range(600):
            try:
                if (await self.http.get(f"{eng.url}/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        eng.ready = True
        await self.patch_status(eng.namespace, eng.name, ready=True)
        log.info("pod %s ready at %s after a %.0f s cold start", key, eng.url, cold)
        if not eng.trainer:
            return
        while True:
            await asyncio.sleep(0.5)
            try:
                text = (await self.http.get(f"{eng.url}/metrics")).text
            except httpx.HTTPError:
                continue
            # The trainer's exit once it is done, as the kubelet would see the process end with 0.
            done = any(line.startswith("ebbtide_trainer_done 1") for line in text.splitlines())
            if done:
                await self.patch_status(eng.namespace, eng.name, succeeded=True)
                await self.stop(key)
                return

    async def start_real(self, key: str, pod: dict[str, Any], node: NodeState) -> None:
        """A real `vllm serve` with the pod's command line; Ready once the pod's readiness probe answers 200."""
        ns, name = key.split("/", 1)
        container = pod["spec"]["containers"][0]
        port = _free_port()
        assert self.s.vllm_env is not None
        try:
            if self.s.models_dir is None:
                raise RealEngineError("the fleet has no models folder (--models-dir) for real engines")
            argv = vllm_argv(
                list(container.get("command", [])),
                list(container.get("args", [])),
                self.s.vllm_env / "bin" / "vllm",
                self.s.models_dir,
                port,
            )
        except RealEngineError as e:
            log.warning("pod %s: cannot run as a real engine: %s", key, e)
            await self.patch_status(ns, name, failed=str(e))
            return
        eng = await self.announce_real(key, pod, node, port, trainer=False)
        logfile = self.s.state_dir / "real-engines" / f"{ns}_{name}.log"
        eng.process = await RealProcess.start(argv, container_env(container, pod), logfile)
        self.processes.add(eng.process)
        log.info("pod %s: real vLLM pid %d at %s (log %s): %s", key, eng.process.pid, eng.url, logfile, " ".join(argv))
        eng.task = asyncio.get_running_loop().create_task(self.probe_real(key, eng, readiness_probe(container)))

    async def announce_real(
        self, key: str, pod: dict[str, Any], node: NodeState, port: int, *, trainer: bool
    ) -> RunningEngine:
        """Book a real process's GPUs, announce its address on the pod and mark it not ready until it answers."""
        ns, name = key.split("/", 1)
        container = pod["spec"]["containers"][0]
        url = f"http://127.0.0.1:{port}"
        self.next_pod_ip(key)
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        eng = RunningEngine(ns, name, node.name, url, self.claim_gpus(key, container, node), trainer, grace_s=grace)
        self.engines[key] = eng
        await asyncio.to_thread(
            self.core.patch_namespaced_pod, name, ns, {"metadata": {"annotations": {L.ENGINE_URL: url}}}
        )
        await self.patch_status(ns, name, ready=False)
        return eng

    async def start_trainer(self, key: str, pod: dict[str, Any], node: NodeState) -> None:
        """The real LoRA trainer with the pod's command line: Running once its /metrics answers, Succeeded when it
        exits 0 on its own, Failed (with its termination message) otherwise."""
        ns, name = key.split("/", 1)
        container = pod["spec"]["containers"][0]
        port = _free_port()
        assert self.s.trainer_env is not None
        args = list(container.get("args", []))
        folder = args[args.index("--checkpoint-dir") + 1] if "--checkpoint-dir" in args else "checkpoints"
        try:
            if self.s.models_dir is None:
                raise RealEngineError("the fleet has no models folder (--models-dir) for real trainers")
            argv = trainer_argv(
                list(container.get("command", [])),
                args,
                self.s.trainer_env / "bin" / "python",
                self.s.models_dir,
                # file:// storage is the node's own folder (as a hostPath); other schemes the fleet's storage.
                Path("/" + folder[len("file://") :].lstrip("/"))
                if folder.startswith("file://")
                else local_path(folder, self.s.state_dir),
                port,
            )
        except RealEngineError as e:
            log.warning("pod %s: cannot run as a real trainer: %s", key, e)
            await self.patch_status(ns, name, failed=str(e))
            return
        eng = await self.announce_real(key, pod, node, port, trainer=True)
        logs = self.s.state_dir / "real-engines"
        termination = logs / f"{ns}_{name}.termination"
        env = {
            **container_env(container, pod),
            "EBBTIDE_TERMINATION_LOG": str(termination),
            # The trainer package is this repository's (the image copies it); the fleet runs from a checkout.
            "PYTHONPATH": REPO_ROOT,
        }
        eng.process = await RealProcess.start(argv, env, logs / f"{ns}_{name}.log")
        self.processes.add(eng.process)
        log.info("pod %s: real trainer pid %d at %s: %s", key, eng.process.pid, eng.url, " ".join(argv))
        eng.task = asyncio.get_running_loop().create_task(self.watch_trainer(key, eng, termination))

    async def watch_trainer(self, key: str, eng: RunningEngine, termination: Path) -> None:
        assert eng.process is not None
        while not eng.process.exited():
            if not eng.ready:
                try:
                    if (await self.http.get(f"{eng.url}/metrics")).status_code == 200:
                        eng.ready = True
                        await self.patch_status(eng.namespace, eng.name, ready=True)
                except httpx.HTTPError:
                    pass
            await asyncio.sleep(0.5)
        code = eng.process.proc.returncode
        eng.ready = False
        self.processes.discard(eng.process)
        message = await asyncio.to_thread(_read_or_empty, termination)
        log.info("pod %s: real trainer exited with %s: %s", key, code, message)
        if code == 0:
            await self.patch_status(eng.namespace, eng.name, succeeded=True)
        else:
            await self.patch_status(eng.namespace, eng.name, failed=message or f"trainer exited with {code}")
        await self.stop(key)

    async def probe_real(self, key: str, eng: RunningEngine, probe: Any) -> None:
        """The kubelet's readiness probing: every second until the first success (as the pods' startup probe
        would find it, sooner), then every periodSeconds; a process that exits fails the pod."""
        assert eng.process is not None
        started = asyncio.get_running_loop().time()
        ready, failures = False, 0
        while not eng.process.exited():
            try:
                ok = (await self.http.get(f"{eng.url}{probe.path}")).status_code == 200
            except httpx.HTTPError:
                ok = False
            failures = 0 if ok else failures + 1
            if ok and not ready:
                ready = eng.ready = True
                await self.patch_status(eng.namespace, eng.name, ready=True)
                took = asyncio.get_running_loop().time() - started
                log.info("pod %s ready (real vLLM) after %.1f s", key, took)
            elif ready and failures >= probe.failure_threshold:
                ready = eng.ready = False
                await self.patch_status(eng.namespace, eng.name, ready=False)
            await asyncio.sleep(probe.period_s if ready else 1.0)
        code = eng.process.proc.returncode
        eng.ready = False
        log.warning("pod %s: real vLLM exited with %s (log %s)", key, code, eng.process.log)
        await self.patch_status(eng.namespace, eng.name, failed=f"vllm exited with {code}; see {eng.process.log.name}")

    async def stop(self, key: str, grace_s: float = 0.0) -> None:
        """Stop a pod's engine as a kubelet does: SIGTERM (the engine's own graceful shutdown, in the background),
        and the hard stop once the pod's grace period is over."""
        eng = self.engines.pop(key, None)
        self.pod_ips.pop(key, None)
        if eng is None:
            return
        if eng.task and asyncio.current_task() is not eng.task:
            eng.task.cancel()
        eng.task = asyncio.get_running_loop().create_task(self._terminate(eng, grace_s))

    async def _terminate(self, eng: RunningEngine, grace_s: float) -> None:
        if eng.runner:
            try:
                if grace_s > 0:
                    await asyncio.wait_for(shutdown(eng.runner.app), grace_s)
            except TimeoutError:
                log.warning("pod %s/%s: still busy after its %.0f s grace period", eng.namespace, eng.name, grace_s)
            await eng.runner.cleanup()  # the hard stop: whatever is still running ends as aborted
        if eng.process is not None:
            # The pod is gone from routing already; its engine gets the grace period to finish in-flight work.
            key = f"{eng.namespace}/{eng.name}"
            grace = grace_s if grace_s > 0 else eng.grace_s
            task = asyncio.get_running_loop().create_task(self.terminate_real(key, eng.process, grace))
            self.terminating.add(task)
            task.add_done_callback(self.terminating.discard)
        node = self.nodes.get(eng.node)
        if node:
            for i in eng.gpus:
                node.owner.pop(i, None)

    async def terminate_real(self, key: str, process: RealProcess, grace_s: float) -> None:
        t0 = asyncio.get_running_loop().time()
        code = await process.terminate(grace_s)
        self.processes.discard(process)
        took = asyncio.get_running_loop().time() - t0
        how = f"exited with {code}" if code is not None else f"killed after the {grace_s:.0f} s grace period"
        log.info("pod %s: real vLLM %s %.1f s after SIGTERM", key, how, took)

    async def patch_status(
        self, ns: str, name: str, ready: bool = False, succeeded: bool = False, failed: str | None = None
    ) -> None:
        now = _now()
        ip = self.pod_ips.get(f"{ns}/{name}", "10.244.255.254")
        flag = "True" if ready else "False"
        state: dict[str, Any] = {"running": {"startedAt": now}}
        phase = "Running"
        if succeeded:
            phase, flag, state = "Succeeded", "False", {"terminated": {"exitCode": 0, "reason": "Completed"}}
        if failed:
            phase, flag = "Failed", "False"
            state = {"terminated": {"exitCode": 2, "reason": "Error", "message": failed[:500]}}
        body = {
            "status": {
                "phase": phase,
                "hostIP": "10.0.0.1",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                    {"type": "Ready", "status": flag, "lastTransitionTime": now},
                ],
                "containerStatuses": [
                    {
                        "name": "engine",
                        "image": "ghcr.io/ebbtide/engine-sim:0.1.0",
                        "imageID": "",
                        "ready": ready,
                        "restartCount": 0,
                        "started": not (succeeded or failed),
                        "state": state,
                    }
                ],
            }
        }
        try:
            await asyncio.to_thread(self.core.patch_namespaced_pod_status, name, ns, body)
        except client.ApiException as e:
            if e.status != 404:
                raise

    async def serve_dcgm(self, node: NodeState) -> None:
        """A DCGM-exporter-compatible /metrics for the node, read from its simulated NVML."""
        app = web.Application()
        app.router.add_get("/metrics", lambda r: self.dcgm_metrics(node))
        runner = web.AppRunner(app)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, self.s.engine_host, port).start()
        node.runner = runner
        url = f"http://{self.s.engine_host}:{port}"
        await asyncio.to_thread(self.core.patch_node, node.name, {"metadata": {"annotations": {DCGM_URL: url}}})

    async def dcgm_metrics(self, node: NodeState) -> web.Response:
        readings = []
        for i in range(node.gpus):
            key = node.owner.get(i)
            power = {
                "draw_w": node.nvml.power_usage_mw(i) / 1000,
                "limit_w": node.nvml.enforced_limit_mw(i) / 1000,
            }
            ns, _, pod = (key or "").partition("/")
            readings.append(dcgm.gpu_reading(i, node.product, power, (ns, pod) if key else None))
        return web.Response(text=dcgm.render(node.name, node.product, readings), content_type="text/plain")
