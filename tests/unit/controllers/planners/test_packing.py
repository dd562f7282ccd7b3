"""Kubernetes objects to packer snapshots: gangs are grouped, bound pods charge their nodes, partial gangs wait."""

from __future__ import annotations

from controllers.planners.finetune import TrainerReport, plan_job
from controllers.planners.packing import JobInfo, build_snapshot, cpu_milli, job_gang, mem_mib
from crds import labels as L
from packer.snapshot import GangKind
from tests.unit.controllers.builders import SCHED, job
from tests.unit.controllers.builders import gang_pod as pod
from tests.unit.controllers.builders import gpu_node as node


def test_quantities() -> None:
    assert cpu_milli("4") == 4000 and cpu_milli("250m") == 250
    assert mem_mib("32Gi") == 32768 and mem_mib("1Ti") == 1024 * 1024


def test_bound_pods_charge_their_node_and_form_running_gangs() -> None:
    pods = [pod("ft-a1-w0", "ft-a1", 8, "n1", size=2, **{L.FINETUNE: "ft"}), pod("ft-a1-w1", "ft-a1", 8, "n2", 2)]
    snap, pending = build_snapshot([node("n1"), node("n2")], pods, SCHED, {}, {"ns/ft": JobInfo(True, 5.0)})
    assert pending == {} and snap.pending == []
    (gang,) = snap.running
    assert gang.uid == "ns/ft-a1" and gang.kind == GangKind.FINETUNE and gang.preemptible
    assert gang.last_checkpoint_s == 5.0
    assert all(sum(n.gpu_free_milli) == 0 for n in snap.nodes)


def test_pending_gang_waits_until_every_member_exists() -> None:
    half = [pod("svc-r0-leader", "svc-r0", 8, size=2, **{L.SERVICE: "svc"})]
    snap, _ = build_snapshot([node("n1")], half, SCHED, {}, {})
    assert snap.pending == []
    both = [*half, pod("svc-r0-worker-0", "svc-r0", 8, size=2, **{L.SERVICE: "svc"})]
    snap, pending = build_snapshot([node("n1")], both, SCHED, {}, {})
    (gang,) = snap.pending
    assert len(gang.pods) == 2 and gang.kind == GangKind.SERVING and gang.service == "ns/svc"
    assert gang.gpu_products == frozenset({"NVIDIA-L4"}) and gang.priority == 100
    assert set(pending) == {"ns/svc-r0"}


def test_pods_of_other_schedulers_are_not_ours_to_place() -> None:
    other = pod("x", "x", 1)
    other["spec"]["schedulerName"] = "default-scheduler"
    snap, _ = build_snapshot([node("n1")], [other], SCHED, {}, {})
    assert snap.pending == []


def test_the_resume_what_if_places_the_very_gang_a_resume_creates() -> None:
    preempted = job(
        gpu={"count": 2, "types": ["L4"]},
        workers={"min": 1, "max": 2},
        priorityClassName="batch",
        status={"phase": "Preempted", "attempt": 1, "lastCheckpoint": {"path": "/ck/41", "step": 41}},
    )
    created = plan_job(preempted, "", [], TrainerReport(), {"batch"}, 0.0, SCHED).create
    for p in created:
        p["spec"]["priority"] = 100  # what admission writes from the PriorityClass
    snapshot, _ = build_snapshot([node("n1")], created, SCHED, {}, {})
    assert job_gang(preempted, {"batch": 100}, SCHED) == snapshot.pending[0]
