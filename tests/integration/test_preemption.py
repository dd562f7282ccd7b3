"""Priority and preemption story: a low-priority fine-tune job fills the L4 GPUs; a high-priority service arrives;
the job checkpoints (SIGTERM) and is preempted; the service becomes Ready; when capacity returns the job resumes
from its checkpoint and finishes; its adapter is published to the LLMService it names once that exists, and served
by name. Placement is Ebbtide's packer (schedulerName: ebbtide-packer)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.kube import ROOT, Cluster, condition, wait_until

SCENARIO = ROOT / "examples" / "preemption"
JOB = (SCENARIO / "low-priority-finetune.yaml").read_text()
SERVICE = (SCENARIO / "high-priority-service.yaml").read_text()


def job(c: Cluster, ns: str) -> dict[str, Any]:
    return c.get("ftj", "big-lora", "-n", ns)  # type: ignore[no-any-return]


def status(c: Cluster, ns: str) -> dict[str, Any]:
    return job(c, ns).get("status") or {}


def reasons(c: Cluster, ns: str) -> set[str]:
    return {e["reason"] for e in c.get("events", "-n", ns)["items"]}


def test_high_priority_service_preempts_job_after_checkpoint_and_job_resumes(cluster: Cluster, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=JOB)
    wait_until("job Running on both L4 nodes", lambda: status(cluster, ns).get("phase") == "Running", 90)
    nodes = {p["spec"]["nodeName"] for p in cluster.get("pods", "-n", ns, "-l", "ebbtide.dev/finetune")["items"]}
    assert nodes == {"gpu-l4-6", "gpu-l4-7"}, nodes
    wait_until("training progresses", lambda: (status(cluster, ns).get("step") or 0) >= 30, 60)

    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=SERVICE)

    wait_until("job preempted", lambda: status(cluster, ns).get("phase") == "Preempted", 90)
    st = status(cluster, ns)
    sigterm_step = st["checkpointRequest"]["step"]  # what the controller read before it sent SIGTERM
    assert sigterm_step >= 30 and st["preemptions"] == 1

    def service_ready() -> bool:
        s = cluster.get("llms", "prod-chat", "-n", ns).get("status") or {}
        return s.get("readyReplicas") == 1

    wait_until("service Ready on an L4", service_ready, 90)
    pod = cluster.get("pods", "-n", ns, "-l", "ebbtide.dev/service=prod-chat")["items"][0]
    assert pod["spec"]["nodeName"].startswith("gpu-l4-")
    assert pod["spec"]["schedulerName"] == "ebbtide-packer"
    assert {"PreemptionRequested", "Preempted", "Preempting"} <= reasons(cluster, ns)
    assert status(cluster, ns).get("phase") == "Preempted", "the job must wait while the service holds a GPU"

    cluster.kubectl("delete", "llms", "prod-chat", "-n", ns)
    # The SIGTERM checkpoint, read back from the resumed trainer's metrics: the steps before SIGTERM are kept.
    resumed = wait_until("job resumed", lambda: status(cluster, ns).get("resumedFromStep"), 90)
    assert status(cluster, ns)["attempt"] == 2 and resumed >= sigterm_step
    wait_until("job Succeeded", lambda: status(cluster, ns).get("phase") == "Succeeded", 120)
    assert {"CapacityReturned", "Checkpointed", "Resumed"} <= reasons(cluster, ns)
    # Its publish target (llama3-8b) is not in this namespace yet: a condition on the job, nothing else.
    published = wait_until("Published condition", lambda: condition(job(cluster, ns), "Published"), 30)
    assert published["status"] == "False" and published["reason"] == "PublishTargetNotFound"
    assert status(cluster, ns)["phase"] == "Succeeded"

    # Once the service exists the adapter is published to it and served by name on its replicas.
    cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples" / "dense-service.yaml"))

    def served() -> list[str]:
        svc = cluster.get("llms", "llama3-8b", "-n", ns).get("status") or {}
        return [a["fromJob"] for a in svc.get("adapters") or [] if a["name"] == "tickets-lora" and a["loadedReplicas"]]

    assert wait_until("tickets-lora loaded on llama3-8b", served, 90) == ["big-lora"]
    published = wait_until(
        "Published", lambda: (c := condition(job(cluster, ns), "Published")) and c["status"] == "True" and c, 30
    )
    assert published["reason"] == "AdapterPublished"
    pod = cluster.get("pods", "-n", ns, "-l", "ebbtide.dev/service=llama3-8b")["items"][0]
    url = pod["metadata"]["annotations"]["ebbtide.dev/engine-url"]
    answer = httpx.post(
        f"{url}/v1/completions", json={"model": "tickets-lora", "prompt": "late order", "max_tokens": 4}
    )
    assert answer.status_code == 200 and answer.json()["model"] == "tickets-lora"


def test_gang_that_can_never_fit_is_unschedulable_without_preemption(cluster: Cluster, ns: str) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        stdin=SERVICE.replace("name: prod-chat", "name: too-wide").replace(
            "gpu: {count: 1, types: [L4]}", "gpu: {count: 16, perNode: 16, types: [L4]}\n  parallelism: {tensor: 16}"
        ),
    )

    def unschedulable() -> str | None:
        conds = (cluster.get("llms", "too-wide", "-n", ns).get("status") or {}).get("conditions", [])
        d = next((c for c in conds if c["type"] == "Degraded"), None)
        return d["message"] if d and d["reason"] == "Unschedulable" else None

    message = wait_until("Unschedulable condition", unschedulable, 60)
    assert "ebbtide-packer" in message
    assert "Preempting" not in reasons(cluster, ns)
