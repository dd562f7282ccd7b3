"""FineTuneJob story: it runs, is preempted (SIGTERM: checkpoint now, then exit), resumes from that checkpoint,
succeeds, and its adapter is published to the LLMService it names: every ready replica loads it and serves it by
name; taking it off the service unloads it."""

from __future__ import annotations

from typing import Any

import httpx

from tests.kube import ROOT, Cluster, condition, wait_until

JOB = (ROOT / "examples" / "finetune-job.yaml").read_text()
SERVICE = ROOT / "examples" / "dense-service.yaml"


def job(c: Cluster, ns: str) -> dict[str, Any]:
    return c.get("ftj", "support-bot-lora", "-n", ns)  # type: ignore[no-any-return]


def phase(c: Cluster, ns: str) -> str | None:
    return (job(c, ns).get("status") or {}).get("phase")


def adapters(c: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in (c.get("llms", "llama3-8b", "-n", ns).get("status") or {}).get("adapters") or []}


def engine_urls(c: Cluster, ns: str) -> list[str]:
    pods = c.get("pods", "-n", ns, "-l", "ebbtide.dev/service=llama3-8b")["items"]
    return [p["metadata"]["annotations"]["ebbtide.dev/engine-url"] for p in pods]


def test_finetune_job_is_preempted_resumes_succeeds_and_its_adapter_is_served(cluster: Cluster, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(SERVICE))  # the publish target, LoRA on from the start
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=JOB.replace("totalSteps: 300", "totalSteps: 150"))
    wait_until("Running", lambda: phase(cluster, ns) == "Running", 60)
    wait_until("some progress", lambda: (job(cluster, ns)["status"].get("step") or 0) >= 20, 60)

    cluster.kubectl("annotate", "ftj", "support-bot-lora", "-n", ns, "ebbtide.dev/preempt=make room for serving")
    wait_until("Preempted", lambda: phase(cluster, ns) == "Preempted", 60)
    st = job(cluster, ns)["status"]
    sigterm_step = st["checkpointRequest"]["step"]
    assert sigterm_step >= 20 and st["preemptions"] == 1
    assert condition(job(cluster, ns), "Preempted")["status"] == "True"  # type: ignore[index]
    wait_until(
        "workers evicted",
        lambda: (
            not [
                p
                for p in cluster.get("pods", "-n", ns, "-l", "ebbtide.dev/finetune")["items"]
                if not p["metadata"].get("deletionTimestamp")
            ]
        ),
        60,
    )

    cluster.kubectl("annotate", "ftj", "support-bot-lora", "-n", ns, "ebbtide.dev/preempt-")
    wait_until("resumed", lambda: job(cluster, ns)["status"].get("attempt") == 2, 60)
    pod = cluster.get("pod", "support-bot-lora-a2-w0", "-n", ns)
    assert "--resume-from" not in pod["spec"]["containers"][0]["args"]  # the trainer resumes from `latest` itself
    assert pod["spec"]["terminationGracePeriodSeconds"] == 120

    # The step the resumed trainer reports is the SIGTERM checkpoint's: nothing trained before it is lost.
    resumed = wait_until("read back", lambda: job(cluster, ns)["status"].get("resumedFromStep"), 60)
    assert resumed >= sigterm_step
    wait_until("Succeeded", lambda: phase(cluster, ns) == "Succeeded", 120)
    st = job(cluster, ns)["status"]
    assert st["step"] == 150 and st["adapter"] == f"pvc://ebbtide-checkpoints/{ns}/support-bot-lora/adapter"
    kinds = {e["reason"] for e in cluster.get("events", "-n", ns)["items"]}
    assert {"Checkpointed", "Preempted", "Resuming", "Resumed", "Succeeded"} <= kinds

    # Published: on the service's spec with the job that made it, loaded on both replicas at run time.
    wait_until(
        "loaded on both replicas", lambda: adapters(cluster, ns).get("support-bot", {}).get("loadedReplicas") == 2, 90
    )
    assert adapters(cluster, ns)["support-bot"]["fromJob"] == "support-bot-lora"
    assert condition(job(cluster, ns), "Published")["reason"] == "AdapterPublished"  # type: ignore[index]
    for url in engine_urls(cluster, ns):
        models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert models["support-bot"]["parent"] == "llama-3-8b"
        answer = httpx.post(f"{url}/v1/completions", json={"model": "support-bot", "prompt": "hi", "max_tokens": 4})
        assert answer.status_code == 200 and answer.json()["model"] == "support-bot"

    # Taken off the service: unloaded everywhere (its files stay).
    cluster.kubectl("patch", "llms", "llama3-8b", "-n", ns, "--type", "merge", "-p", '{"spec": {"adapters": []}}')
    wait_until("unloaded", lambda: "support-bot" not in adapters(cluster, ns), 60)
    for url in engine_urls(cluster, ns):
        wait_until(
            "gone from /v1/models",
            lambda u=url: "support-bot" not in {m["id"] for m in httpx.get(f"{u}/v1/models").json()["data"]},
            30,
        )
    assert "AdapterUnloaded" in {e["reason"] for e in cluster.get("events", "-n", ns)["items"]}
