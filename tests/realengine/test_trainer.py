"""The real LoRA trainer (trainer/, transformers + peft on torch) on the tiny local model and the shipped dataset:
SIGTERM checkpoints and the resumed run continues the same loss curve; a kill -9 mid-checkpoint leaves the previous
checkpoint as `latest`; the adapter it writes is served by name by a real vLLM of the same base model."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conformance.engines import RealEngineEnv, absent, free_port, start_vllm
from tests.kube import ROOT, wait_until
from tests.realengine.stories import note

pytestmark = [pytest.mark.realengine, pytest.mark.timeout(1500)]
DATASET = ROOT / "trainer" / "data" / "tide-questions.jsonl"
LOGS = ROOT / ".run" / "realengine" / "trainer"
STEPS = 24
INTERVAL = 8
STEP_LINE = re.compile(r"step (\d+)/(\d+) loss ([0-9.]+)")


@pytest.fixture(scope="module")
def trainer_python(real_engine_env: RealEngineEnv) -> Path:
    found = subprocess.run(["bash", str(ROOT / "hack" / "trainer-env.sh"), "--check"], capture_output=True, text=True)
    if found.returncode != 0:
        absent(f"TRAINER ENVIRONMENT ABSENT: run hack/trainer-env.sh (make trainer-env). {found.stderr.strip()}")
    return Path(found.stdout.strip().splitlines()[-1]) / "bin" / "python"


@dataclass
class TrainerProc:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    def metrics(self) -> dict[str, float]:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("ebbtide_trainer_"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def losses(self) -> dict[int, float]:
        return {int(m[1]): float(m[3]) for m in STEP_LINE.finditer(self.log.read_text())}

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


def start_trainer(python: Path, model: Path, ckpt: Path, name: str, env: dict[str, str] | None = None) -> TrainerProc:
    LOGS.mkdir(parents=True, exist_ok=True)
    log, port = LOGS / f"{name}.log", free_port()
    argv = [
        str(python), "-m", "trainer", "--base-model", str(model), "--dataset", f"file://{DATASET}",
        "--method", "lora", "--lora-rank", "8", "--lora-alpha", "16", "--learning-rate", "0.002",
        "--batch-size", "4", "--max-steps", str(STEPS), "--checkpoint-dir", f"file://{ckpt}",
        "--checkpoint-interval-steps", str(INTERVAL), "--checkpoint-interval-seconds", "3600",
        "--adapter-name", "tide", "--host", "127.0.0.1", "--port", str(port), "--rank", "0", "--world-size", "1",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
    return TrainerProc(proc, log, port)


def latest(ckpt: Path) -> int:
    name = (ckpt / "latest").read_text().strip()
    return int(json.loads((ckpt / name / "state.json").read_text())["step"])


@pytest.fixture(scope="module")
def reference(trainer_python: Path, real_engine_env: RealEngineEnv, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted run: the loss curve the interrupted one must reproduce."""
    ckpt = tmp_path_factory.mktemp("reference")
    t0 = time.monotonic()
    run = start_trainer(trainer_python, real_engine_env.model, ckpt, "reference")
    assert run.wait(600) == 0, run.log.read_text()[-3000:]
    note(f"trainer: {STEPS} uninterrupted steps (process start included)", time.monotonic() - t0)
    return {"losses": run.losses(), "ckpt": ckpt}


@pytest.fixture(scope="module")
def preempted_run(
    trainer_python: Path, real_engine_env: RealEngineEnv, reference: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    ckpt = tmp_path_factory.mktemp("preempted")
    first = start_trainer(trainer_python, real_engine_env.model, ckpt, "preempted-1")
    wait_until("a dozen steps", lambda: first.metrics().get("ebbtide_trainer_step", 0) >= 11, 600)
    t0 = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    code = first.wait(30)  # well inside the pods' terminationGracePeriodSeconds
    exit_s = time.monotonic() - t0
    before = max(first.losses())
    resumed_from = latest(ckpt)
    second = start_trainer(trainer_python, real_engine_env.model, ckpt, "preempted-2")
    wait_until("the resumed run reports", lambda: "ebbtide_trainer_resumed_from_step" in second.metrics(), 600)
    metrics = second.metrics()
    assert second.wait(600) == 0, second.log.read_text()[-3000:]
    yield {
        "code": code, "exit_s": exit_s, "before": before, "resumed_from": resumed_from, "metrics": metrics,
        "losses_after": second.losses(), "ckpt": ckpt,
    }  # fmt: skip


def test_sigterm_checkpoints_and_the_resumed_run_continues_the_same_loss_curve(
    reference: dict, preempted_run: dict
) -> None:
    r = preempted_run
    print(
        f"[realengine] trainer: {r['before']} steps before SIGTERM; exit {r['code']} {r['exit_s']:.1f} s after it; "
        f"resumed from checkpoint step {r['resumed_from']}; {len(r['losses_after'])} steps after"
    )
    assert r["code"] == 0 and r["exit_s"] < 30
    # The SIGTERM checkpoint holds every step trained, not the last interval checkpoint.
    assert r["resumed_from"] == r["before"] and r["resumed_from"] % INTERVAL != 0
    assert r["metrics"]["ebbtide_trainer_resumed_from_step"] == r["resumed_from"]
    assert min(r["losses_after"]) == r["resumed_from"] + 1 and max(r["losses_after"]) == STEPS
    # Continuous: the steps after the resume compute the very losses of the run never interrupted.
    for step, loss in r["losses_after"].items():
        assert math.isclose(loss, reference["losses"][step], rel_tol=1e-4, abs_tol=1e-5), step
    adapter = r["ckpt"] / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert latest(r["ckpt"]) == STEPS


def test_a_kill_9_mid_checkpoint_leaves_the_previous_checkpoint_latest(
    trainer_python: Path, real_engine_env: RealEngineEnv, tmp_path: Path
) -> None:
    first = start_trainer(trainer_python, real_engine_env.model, tmp_path, "kill9-1")
    wait_until(
        "a first checkpoint", lambda: first.metrics().get("ebbtide_trainer_checkpoint_step", -1) >= INTERVAL, 600
    )
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    previous = latest(tmp_path)
    # The next checkpoint stalls between writing its folder and naming it (the trainer's fault-injection knob).
    slow = start_trainer(
        trainer_python, real_engine_env.model, tmp_path, "kill9-2", {"EBBTIDE_TRAINER_FAULT_CHECKPOINT_PAUSE_S": "120"}
    )
    wait_until("a checkpoint half written", lambda: bool(list(tmp_path.glob(".tmp-checkpoint-*/state.json"))), 600)
    slow.proc.send_signal(signal.SIGKILL)
    slow.wait(30)
    assert latest(tmp_path) == previous
    third = start_trainer(trainer_python, real_engine_env.model, tmp_path, "kill9-3")
    wait_until("resumed", lambda: "ebbtide_trainer_resumed_from_step" in third.metrics(), 600)
    resumed = third.metrics()["ebbtide_trainer_resumed_from_step"]
    third.proc.send_signal(signal.SIGTERM)
    third.wait(60)
    print(
        f"[realengine] trainer: kill -9 mid-checkpoint after step {previous}: "
        f"latest stayed {previous}; resumed {resumed}"
    )
    assert resumed == previous and not list(tmp_path.glob(".tmp-*"))


def test_the_adapter_is_served_by_a_real_vllm_by_name(
    real_engine_env: RealEngineEnv, preempted_run: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = preempted_run["ckpt"] / "adapter"
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    t0 = time.monotonic()
    engine = start_vllm(
        real_engine_env,
        "vllm-lora",
        "--enable-lora",
        "--max-lora-rank",
        "8",
        "--lora-modules",
        f"tide-at-start={adapter}",
    )
    note("vLLM with --enable-lora up", time.monotonic() - t0)
    try:
        with engine.client(timeout=120) as c:
            loaded = c.post("/v1/load_lora_adapter", json={"lora_name": "tide", "lora_path": str(adapter)})
            assert loaded.status_code == 200, loaded.text
            again = c.post("/v1/load_lora_adapter", json={"lora_name": "tide", "lora_path": str(adapter)})
            assert again.status_code == 400, again.text
            missing = c.post("/v1/load_lora_adapter", json={"lora_name": "nope", "lora_path": "/nonexistent/adapter"})
            assert missing.status_code == 404, missing.text
            for what, r in (("load", loaded), ("load again", again), ("load a bad path", missing)):
                print(f"[realengine] vLLM {what}: {r.status_code} {r.text[:200]}")
            models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
            assert models["tide"]["parent"] == "tiny-llama" and models["tide-at-start"]["parent"] == "tiny-llama"
            request = {"model": "tide", "prompt": "What does SIGTERM mean to the trainer?", "max_tokens": 12}
            answer = c.post("/v1/completions", json=request)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            print(f"[realengine] adapter request {json.dumps(request)} -> {json.dumps(body['choices'][0]['text'])}")
            assert body["model"] == "tide" and body["usage"]["completion_tokens"] > 0
            unloaded = c.post("/v1/unload_lora_adapter", json={"lora_name": "tide"})
            unknown = c.post("/v1/unload_lora_adapter", json={"lora_name": "tide"})
            print(f"[realengine] vLLM unload: {unloaded.status_code} {unloaded.text[:200]}")
            print(f"[realengine] vLLM unload again: {unknown.status_code} {unknown.text[:200]}")
            assert unloaded.status_code == 200 and unknown.status_code == 404
            assert "tide" not in {m["id"] for m in c.get("/v1/models").json()["data"]}
    finally:
        engine.stop()
