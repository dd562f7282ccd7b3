"""The fine-tuning loop for real, on the local control plane: a FineTuneJob of `trainer.type: peft` runs the real
LoRA trainer (the fleet starts `python -m trainer` for its worker pod), is preempted (SIGTERM: checkpoint now, then
exit), resumes from that checkpoint, succeeds, and its adapter is published to an LLMService of the real vLLM,
which loads it at run time and answers a completion by the adapter's name through the gateway."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conformance.engines import RealEngineEnv, absent
from tests.kube import ROOT, Cluster, condition, wait_until
from tests.realengine.stories import READY_TIMEOUT_S, find_trainer_env, gateway, note, service_yaml

pytestmark = [pytest.mark.realengine, pytest.mark.timeout(1500)]
DATASET = ROOT / "trainer" / "data" / "tide-questions.jsonl"


def job_yaml(env: RealEngineEnv, storage: Path) -> str:
    return f"""
apiVersion: ebbtide.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: tide-lora}}
spec:
  baseModel: {{name: tiny-llama, source: "pvc://{env.model.name}", parametersB: 0.001}}
  dataset: {{uri: "file://{DATASET}"}}
  hyperparameters: {{rank: 8, alpha: 16, learningRate: 0.002, batchSize: 4, totalSteps: 40}}
  gpu: {{count: 1, types: [L4]}}
  checkpoint: {{storage: "file://{storage}", intervalSteps: 8, intervalSeconds: 600, gracePeriodSeconds: 60}}
  trainer: {{type: peft}}
  priorityClassName: ebbtide-batch-low
  preemptible: true
  output: {{adapterName: tide, publishTo: tiny}}
"""


def test_a_real_trainer_is_preempted_resumes_succeeds_and_its_adapter_is_served_by_vllm(
    cluster: Cluster, ns: str, real_engine_env: RealEngineEnv, tmp_path: Path
) -> None:
    if find_trainer_env() is None:
        absent("TRAINER ENVIRONMENT ABSENT: run hack/trainer-env.sh (make trainer-env)")
    t0 = time.monotonic()
    lora = ("--enable-lora", "--max-lora-rank", "8")
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=service_yaml(real_engine_env, "tiny", extra_args=lora))
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=job_yaml(real_engine_env, tmp_path))

    def job() -> dict[str, Any]:
        return cluster.get("ftj", "tide-lora", "-n", ns)  # type: ignore[no-any-return]

    def st() -> dict[str, Any]:
        return job().get("status") or {}

    wait_until("a dozen steps", lambda: (st().get("step") or 0) >= 12, READY_TIMEOUT_S, 1.0)
    cluster.kubectl("annotate", "ftj", "tide-lora", "-n", ns, "ebbtide.dev/preempt=make room for serving")
    wait_until("Preempted", lambda: st().get("phase") == "Preempted", 120, 1.0)
    sigterm_step = st()["checkpointRequest"]["step"]
    before = st().get("step")
    cluster.kubectl("annotate", "ftj", "tide-lora", "-n", ns, "ebbtide.dev/preempt-")
    resumed = wait_until("resumed and read back", lambda: st().get("resumedFromStep"), READY_TIMEOUT_S, 1.0)
    wait_until("Succeeded", lambda: st().get("phase") == "Succeeded", 600, 1.0)
    note("real trainer: apply to Succeeded with one preemption", time.monotonic() - t0)
    print(f"[realengine] story: SIGTERM at step {sigterm_step} (status step {before}); resumed from {resumed}")
    assert resumed >= sigterm_step >= 12 and st()["step"] == 40
    assert (tmp_path / ns / "tide-lora" / "adapter" / "adapter_config.json").is_file()

    def loaded() -> bool:
        adapters = (cluster.get("llms", "tiny", "-n", ns).get("status") or {}).get("adapters") or []
        return any(a["name"] == "tide" and a["loadedReplicas"] == 1 and a["fromJob"] == "tide-lora" for a in adapters)

    wait_until("the adapter loaded on the vLLM replica", loaded, READY_TIMEOUT_S, 1.0)
    assert condition(job(), "Published")["reason"] == "AdapterPublished"  # type: ignore[index]
    with gateway(cluster.kubeconfig, ns, "tiny") as (url, _):
        wait_until("the gateway routes to the replica", lambda: httpx.get(f"{url}/healthz").json()["backends"], 30)
        request = {"model": "tide", "prompt": "What does SIGTERM mean to the trainer?", "max_tokens": 8}
        r = httpx.post(f"{url}/v1/completions", json=request, timeout=60)
    assert r.status_code == 200, r.text
    print(f"[realengine] story: adapter request {request} -> {r.json()['choices'][0]['text']!r}")
    assert r.json()["model"] == "tide"
    note("real trainer story: apply to the adapter served", time.monotonic() - t0)


def test_a_dataset_the_real_trainer_cannot_read_fails_the_job_naming_the_field(
    cluster: Cluster, ns: str, real_engine_env: RealEngineEnv, tmp_path: Path
) -> None:
    if find_trainer_env() is None:
        absent("TRAINER ENVIRONMENT ABSENT: run hack/trainer-env.sh (make trainer-env)")
    manifest = job_yaml(real_engine_env, tmp_path).replace(f"file://{DATASET}", f"file://{tmp_path}/missing.jsonl")
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=manifest)

    def failed() -> dict[str, Any] | None:
        obj: dict[str, Any] = cluster.get("ftj", "tide-lora", "-n", ns)
        return obj if (obj.get("status") or {}).get("phase") == "Failed" else None

    obj = wait_until("Failed", failed, READY_TIMEOUT_S, 1.0)
    ready = condition(obj, "Ready")
    assert ready is not None and ready["reason"] == "InvalidTrainerInput"
    assert ready["message"].startswith("spec.dataset.uri: --dataset: cannot read"), ready["message"]
    assert obj["status"]["failures"] == 0 and obj["status"]["attempt"] == 1  # not retried: it would fail the same
    events = cluster.get("events", "-n", ns, "--field-selector", "involvedObject.name=tide-lora")["items"]
    assert any(e["reason"] == "InvalidTrainerInput" for e in events)
    print(f"[realengine] bad dataset: {ready['message'][:160]}")
