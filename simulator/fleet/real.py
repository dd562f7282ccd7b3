"""Real engines on the fleet: a pod of `engine: vllm` runs as a real `vllm serve` process (the CPU build from
hack/real-engine-env.sh), with the pod's own command line, ports, environment and readiness probe; a FineTuneJob
worker of `engine: peft` runs the real LoRA trainer (`python -m trainer`, with the venv of hack/trainer-env.sh).

The fleet plays the kubelet, so it changes only what a node decides: the binary comes from the real-engine venv,
the `/models` mount is a local folder (`--models-dir`), and the engine listens on a free loopback port in place
of the pod's container port. Deletion is a kubelet's: SIGTERM to the main process, SIGKILL to what is left after
the pod's terminationGracePeriodSeconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where model_uri_to_path (controllers/planners/engines.py) mounts weights inside an engine pod.
MODELS_MOUNT = "/models/"
# The node's environment for the CPU build: no Hub downloads, a 1 GiB KV cache, no usage reports, and no OpenMP
# thread pinning: a kubelet gives each pod its own CPUs, but here every server sees all of them, and vLLM's "auto"
# binding pins every server's worker to the same first core (measured: a second and third server starting beside
# a loaded one took over 4 minutes, their workers at 2% CPU).
NODE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


class RealEngineError(ValueError):
    """The pod cannot run as a real engine on this fleet (the reason goes into the pod's status)."""


@dataclass(frozen=True)
class Probe:
    """A container's HTTP readiness probe, as the kubelet reads it."""

    path: str
    period_s: float
    failure_threshold: int


def vllm_argv(command: list[str], args: list[str], vllm_bin: Path, models_dir: Path, port: int) -> list[str]:
    """The pod's `vllm serve` command line with the node's values: the venv's binary, the model folder the
    `/models` mount stands for, and a loopback host and port."""
    if command[:1] != ["vllm"] or (args[:1] != ["serve"] and command[1:2] != ["serve"]):
        raise RealEngineError(f"not a single-node `vllm serve` pod (command {command[:2]}); only those run here")
    argv = [*command, *args]
    out = [str(vllm_bin), "serve"]
    rest = argv[2:]
    if rest and not rest[0].startswith("-"):
        model = rest.pop(0)
        if not model.startswith(MODELS_MOUNT):
            raise RealEngineError(f"model {model} is not on the {MODELS_MOUNT} mount (use a pvc:// or file:// source)")
        local = models_dir / model[len(MODELS_MOUNT) :].strip("/")
        if not local.is_dir():
            raise RealEngineError(f"model {model} is not in the fleet's models folder ({local.name} missing)")
        out.append(str(local))
    seen: set[str] = set()
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag in ("--host", "--port") and i + 1 < len(rest):
            seen.add(flag)
            out += [flag, "127.0.0.1" if flag == "--host" else str(port)]
            i += 2
            continue
        out.append(flag)
        i += 1
    if "--host" not in seen:
        out += ["--host", "127.0.0.1"]
    if "--port" not in seen:
        out += ["--port", str(port)]
    return out


def trainer_argv(
    command: list[str], args: list[str], python: Path, models_dir: Path, checkpoint_dir: Path, port: int
) -> list[str]:
    """The pod's `python -m trainer` command line with the node's values: the trainer venv's python, the model
    folder the `/models` mount stands for, the local folder of the checkpoint storage, a loopback host and port."""
    if command != ["python", "-m", "trainer"]:
        raise RealEngineError(f"not a `python -m trainer` pod (command {command}); only those run here")
    out = [str(python), "-m", "trainer"]
    i = 0
    while i < len(args):
        flag, value = args[i], args[i + 1] if i + 1 < len(args) else None
        if value is not None and flag in ("--host", "--port", "--base-model", "--checkpoint-dir"):
            if flag == "--host":
                value = "127.0.0.1"
            elif flag == "--port":
                value = str(port)
            elif flag == "--checkpoint-dir":
                value = str(checkpoint_dir)
            elif value.startswith(MODELS_MOUNT):
                value = str(models_dir / value[len(MODELS_MOUNT) :].strip("/"))
            out += [flag, value]
            i += 2
            continue
        out.append(flag)
        i += 1
    return out


def readiness_probe(container: dict[str, Any]) -> Probe:
    """The container's readiness probe (vLLM's `/health` when the pod has none)."""
    probe = container.get("readinessProbe") or {}
    get = probe.get("httpGet") or {}
    return Probe(
        path=str(get.get("path", "/health")),
        period_s=float(probe.get("periodSeconds", 10)),
        failure_threshold=int(probe.get("failureThreshold", 3)),
    )


def container_env(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """The container's environment: the node's (PATH, the CPU build's settings), then the pod's own values;
    downward-API fields the fleet knows (metadata.name, namespace, annotations) are filled in."""
    meta = pod["metadata"]
    env = {**os.environ, **NODE_ENV}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        path = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
        if path == "metadata.name":
            env[item["name"]] = meta["name"]
        elif path == "metadata.namespace":
            env[item["name"]] = meta["namespace"]
        elif path.startswith("metadata.annotations['"):
            value = (meta.get("annotations") or {}).get(path[len("metadata.annotations['") : -2])
            if value is not None:
                env[item["name"]] = value
    return env


class RealProcess:
    """One engine process in its own session (so its engine-core children can be killed with it)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str], log: Path) -> RealProcess:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = await asyncio.to_thread(open, log, "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True
            )
        finally:
            out.close()  # the child holds its own descriptor
        return cls(proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self) -> bool:
        return self.proc.returncode is not None

    async def terminate(self, grace_s: float) -> int | None:
        """SIGTERM to the main process only (as the kubelet sends it), SIGKILL to the session after `grace_s`;
        the main process's exit code, None when it had to be killed."""
        code: int | None = None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(self.proc.wait(), timeout=grace_s)
            except TimeoutError:
                code = None
        else:
            code = self.proc.returncode
        self.kill()
        if self.proc.returncode is None:
            await self.proc.wait()
        return code

    def kill(self) -> None:
        """SIGKILL to the whole session: no engine-core or worker process outlives its pod."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
