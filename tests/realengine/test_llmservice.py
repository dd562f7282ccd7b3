"""A user applies an LLMService of `engine: vllm`: the fleet runs a real `vllm serve` with the pod's command line,
the service turns Ready, and a completion comes back through the gateway."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conformance.engines import RealEngineEnv
from tests.kube import Cluster, condition, wait_until
from tests.realengine.stories import READY_TIMEOUT_S, SERVED, gateway, note, service_yaml

# Real servers start in minutes on a loaded 2-core machine: the stories outlast the suite's 300 s default.
pytestmark = [pytest.mark.realengine, pytest.mark.timeout(900)]


def test_a_vllm_service_turns_ready_and_answers_through_the_gateway(
    cluster: Cluster, ns: str, real_engine_env: RealEngineEnv
) -> None:
    t0 = time.monotonic()
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=service_yaml(real_engine_env, "tiny"))

    def ready() -> bool:
        status = cluster.get("llms", "tiny", "-n", ns).get("status") or {}
        return status.get("readyReplicas") == 1

    wait_until("the vLLM replica Ready", ready, READY_TIMEOUT_S, 1.0)
    note("apply to Ready, 1 real vLLM replica", time.monotonic() - t0)
    svc = cluster.get("llms", "tiny", "-n", ns)
    assert condition(svc, "Ready")["status"] == "True"  # type: ignore[index]

    # The engine is the real vLLM serving the pod's own model: /v1/models names the served model and its folder.
    (pod,) = cluster.get("pods", "-n", ns)["items"]
    assert pod["spec"]["containers"][0]["command"] == ["vllm", "serve"]
    engine = pod["metadata"]["annotations"]["ebbtide.dev/engine-url"]
    models = httpx.get(f"{engine}/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["root"]) for m in models] == [(SERVED, str(real_engine_env.model))]

    with gateway(cluster.kubeconfig, ns, "tiny") as (url, _):
        wait_until("the gateway routes to the replica", lambda: httpx.get(f"{url}/healthz").json()["backends"], 30)
        body = {"model": SERVED, "prompt": "The tide", "max_tokens": 8, "ignore_eos": True, "temperature": 0.0}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == SERVED
    assert answer["usage"]["completion_tokens"] == 8
    assert answer["choices"][0]["finish_reason"] == "length" and answer["choices"][0]["text"]
