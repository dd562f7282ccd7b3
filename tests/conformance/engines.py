"""Engines for the conformance tier: the real vLLM from the cached env (hack/real-engine-env.sh) serving the tiny
local model (hack/tiny-model.py), and the simulated engine, each as its own process on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from autoscaler.observation import RUNNING
from tests.conformance.wire import scrape, value

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / ".run" / "conformance"
ENV_SCRIPT = "hack/real-engine-env.sh"
SERVED = "tiny-llama"  # the served model name both engines answer to
MAX_MODEL_LEN = 512
# Starting vLLM costs 40-70 CPU-seconds; on a shared 2-core machine the wall time can be several times that.
START_TIMEOUT_S = float(os.environ.get("EBBTIDE_REAL_ENGINE_START_TIMEOUT", "600"))


@dataclass
class Engine:
    """One engine process listening on 127.0.0.1."""

    kind: str  # "vllm" or "simulated"
    base_url: str
    proc: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = field(default_factory=list)
    model: str = SERVED

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def terminate(self) -> None:
        """SIGTERM to the main process only, as the kubelet sends it to a container's first process."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the whole process session, as the kubelet ends a container whose grace period ran out."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self, grace_s: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        # vLLM's engine-core and worker processes share the session; none may outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc), e.g. vLLM's engine-core and worker processes."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces and parentheses: the parent pid follows the last ')'.
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, pp in parents.items() if pp in frontier]
        found += children
        frontier = children
    return found


def process_title(pid: int) -> str:
    """A process's command line as it shows in ps (vLLM retitles its children, e.g. VLLM::EngineCore)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start(kind: str, name: str, argv: list[str], env: dict[str, str], port: int, timeout_s: float) -> Engine:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    engine = Engine(kind, f"http://127.0.0.1:{port}", proc, log, argv)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} engine exited with {proc.returncode} before serving:\n{_log_tail(log)}")
        try:
            if httpx.get(f"{engine.base_url}/health", timeout=2).status_code == 200:
                return engine
        except httpx.TransportError:
            pass
        time.sleep(1)
    engine.stop(grace_s=10)
    raise RuntimeError(f"{kind} engine not healthy after {timeout_s:.0f}s:\n{_log_tail(log)}")


@dataclass(frozen=True)
class RealEngineEnv:
    """The cached venv with the real vLLM, the tiny model it serves and the slower one (`hack/tiny-model.py`)."""

    venv: Path
    model: Path
    slow_model: Path


def absent(reason: str) -> NoReturn:
    """Skip the tier with its reason, or fail where the tier was asked to run (`make test`'s real-engine step)."""
    if os.environ.get("EBBTIDE_REQUIRE_REAL_ENGINE"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def find_real_engine_env() -> RealEngineEnv | str:
    """The ready env (the tiny model is created on demand), or the reason it cannot be used."""
    check = subprocess.run(
        ["bash", str(ROOT / ENV_SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        return (
            f"REAL vLLM ENVIRONMENT ABSENT: the conformance tier needs the real vLLM CPU build; build it with "
            f"`{ENV_SCRIPT}` (or `make real-engine`: 6-11 min, ~3.2 GB download) or point EBBTIDE_REAL_ENGINE_ENV "
            f"at a pre-built venv. ({check.stderr.strip()})"
        )
    venv = Path(check.stdout.strip().splitlines()[-1])
    models = []
    for variant in ([], ["--slow"]):
        model = subprocess.run(
            [str(venv / "bin" / "python"), str(ROOT / "hack" / "tiny-model.py"), *variant],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if model.returncode != 0:
            raise RuntimeError(f"hack/tiny-model.py {' '.join(variant)} failed:\n{model.stderr[-3000:]}")
        models.append(Path(model.stdout.strip().splitlines()[-1]))
    return RealEngineEnv(venv, models[0], models[1])


def start_vllm(
    env: RealEngineEnv,
    name: str,
    *extra: str,
    max_model_len: int = MAX_MODEL_LEN,
    extra_env: dict[str, str] | None = None,
    model: Path | None = None,
) -> Engine:
    """`vllm serve` of the tiny model, as the issue's recipe runs it (float32, eager, 1 GiB of KV cache)."""
    port = free_port()
    argv = [
        str(env.venv / "bin" / "vllm"),
        "serve",
        str(model or env.model),
        "--served-model-name",
        SERVED,
        "--dtype",
        "float32",
        "--max-model-len",
        str(max_model_len),
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    penv = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        **(extra_env or {}),
    }
    return _start("vllm", name, argv, penv, port, START_TIMEOUT_S)


def start_simulated(name: str, *extra: str, max_model_len: int = MAX_MODEL_LEN) -> Engine:
    """`python -m simulator.engine` with the same served name and context length."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "simulator.engine",
        "--model",
        "llama-3-8b",
        "--gpu",
        "H100",
        "--served-model-name",
        SERVED,
        "--max-model-len",
        str(max_model_len),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    return _start("simulated", name, argv, dict(os.environ), port, 60)


def both(sim_mismatch: str | None = None, *, param: str = "engine") -> pytest.MarkDecorator:
    """Run a check against both engines; a known simulator mismatch makes the simulated case a strict xfail.

    With the default `param`, the test gets the session's running engine; any other name gets the kind as a string.
    """
    sim_marks = [pytest.mark.xfail(strict=True, reason=f"simulator mismatch: {sim_mismatch}")] if sim_mismatch else []
    return pytest.mark.parametrize(
        param,
        [pytest.param("vllm", id="vllm"), pytest.param("simulated", id="simulated", marks=sim_marks)],
        indirect=param == "engine",
    )


# A context far beyond the models' 2,048 positions (vLLM allows it with VLLM_ALLOW_LONG_MAX_MODEL_LEN; the weights
# are random, so nothing is lost): the checks that must look inside a running stream size it to the machine's
# speed, and a machine faster than this one needs longer streams.
LONG_CONTEXT = 32768
SIMULATED_CONTEXT = 2048  # the simulated engine's speed is its model's, and 1,800 tokens already take it seconds
MIN_STREAM_TOKENS = 1800
STREAM_INTERVAL = 32


def start_long(kind: str, env: RealEngineEnv | None, name: str, *extra: str) -> Engine:
    """An engine of `kind` for checks that look inside running streams; its own process, since they end it.

    vLLM serves the slow model (on the tiny one its engine core outruns its API server on 2 cores, and the backlog
    holds every answer until the streams end) with a long context, in chunks of STREAM_INTERVAL tokens (one event
    per token costs the API server and the test's readers more than the engine)."""
    if kind == "vllm":
        assert env is not None
        return start_vllm(
            env,
            name,
            "--stream-interval",
            str(STREAM_INTERVAL),
            *extra,
            max_model_len=LONG_CONTEXT,
            extra_env={"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
            model=env.slow_model,
        )
    return start_simulated(name, *extra, max_model_len=SIMULATED_CONTEXT)


def tokens_lasting(engine: Engine, seconds: float) -> int:
    """How many tokens a stream of this engine needs to last about `seconds` (it is warmed up first)."""
    body = {"model": SERVED, "prompt": "time me", "max_tokens": 256, "ignore_eos": True}
    with engine.client(timeout=300) as c:
        c.post("/v1/completions", json={**body, "max_tokens": 4}).raise_for_status()  # the first request's warm-up
        t0 = time.monotonic()
        c.post("/v1/completions", json=body).raise_for_status()
        rate = 256 / max(time.monotonic() - t0, 1e-3)
    # Concurrent streams share the steps; on this tiny model a step of a few streams costs about one of a single
    # stream, and where it costs more the streams only last longer.
    return max(MIN_STREAM_TOKENS, min(int(rate * seconds), longest_stream(engine)))


def requests_running(engine: Engine) -> float:
    """The requests the engine's core is still generating, from its own `/metrics`; a client's open stream may be
    one the core finished long ago and the reader has not caught up with."""
    with engine.client(timeout=30) as c:
        return value(scrape(c), RUNNING, model_name=engine.model)


def longest_stream(engine: Engine) -> int:
    """The most tokens one stream of this engine can ask for from a short prompt."""
    return (LONG_CONTEXT if engine.kind == "vllm" else SIMULATED_CONTEXT) - 64
