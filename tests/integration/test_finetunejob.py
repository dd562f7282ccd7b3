"""FineTuneJob story: it runs, is preempted (SIGTERM: checkpoint now, then exit), resumes from that checkpoint and
succeeds."""

from __future__ import annotations

from typing import Any

from tests.kube import ROOT, Cluster, condition, wait_until

JOB = (ROOT / "examples" / "finetune-job.yaml").read_text()


def job(c: Cluster, ns: str) -> dict[str, Any]:
    return c.get("ftj", "support-bot-lora", "-n", ns)  # type: ignore[no-any-return]


def phase(c: Cluster, ns: str) -> str | None:
    return (job(c, ns).get("status") or {}).get("phase")


def test_finetune_job_is_preempted_resumes_from_checkpoint_and_succeeds(cluster: Cluster, ns: str) -> None:
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
        lambda: not [p for p in cluster.get("pods", "-n", ns)["items"] if not p["metadata"].get("deletionTimestamp")],
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
