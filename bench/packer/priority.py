"""Priority scenario suite: seeded clusters (20-500 nodes) full of lower-priority work, a batch of mixed-priority
gangs arrives; Ebbtide (greedy + CP-SAT) against greedy placement with greedy preemption.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field

from packer import (
    ClusterSnapshot,
    Gang,
    GangKind,
    Node,
    Packer,
    PackerConfig,
    Placement,
    Plan,
    PodRequest,
    RunningGang,
    ServiceBudget,
    SolverStatus,
    Verdict,
)
from packer.exact import ExactConfig

RACK = "topology.ebbtide.dev/rack"
PRODUCTS = ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB")
NOW = 100_000.0


@dataclass
class ScenarioResult:
    """One scenario, both packers."""

    seed: int
    nodes: int
    classes: int
    high_gpus_greedy: float
    high_gpus_ebbtide: float
    weighted_greedy: float  # GPUs placed, summed over classes with class rank as weight
    weighted_ebbtide: float
    evictions_greedy: int
    evictions_ebbtide: int
    solves: int
    greedy_missed_high: bool  # greedy left a schedulable top-priority gang unplaced (a "failure case")
    statuses: list[str] = field(default_factory=list)
    max_solve_s: float = 0.0
    ebbtide_s: float = 0.0  # wall time of the whole Ebbtide decision

    @property
    def certified(self) -> bool:
        """Every CP-SAT solve of this scenario was proven optimal."""
        return self.solves > 0 and all(s == SolverStatus.OPTIMAL.value for s in self.statuses)


def generate(seed: int, n_nodes: int) -> ClusterSnapshot:
    """A busy cluster and a burst of pending gangs, deterministic in `seed`."""
    rng = random.Random(seed)
    classes = [0, 1000, 100_000] if rng.random() < 0.7 else [0, 100_000]
    nodes: list[Node] = []
    for i in range(n_nodes):
        gpus = 8 if rng.random() < 0.85 else 4
        product = PRODUCTS[0] if rng.random() < 0.75 else PRODUCTS[1]
        cpu, mem = gpus * 12_000, gpus * 128 * 1024
        nodes.append(Node(f"node-{i:04d}", [1000] * gpus, cpu, mem, cpu, mem, product, {RACK: f"rack-{i // 8:03d}"}))
    by_name = {n.name: n for n in nodes}
    running: list[RunningGang] = []
    services: dict[str, ServiceBudget] = {}
    replicas: dict[str, int] = {}
    n_services = max(2, n_nodes // 20)
    fill = rng.uniform(0.85, 0.98)
    for node in nodes:
        while sum(node.gpu_free_milli) > (1 - fill) * 1000 * node.gpu_count:
            free = [g for g, f in enumerate(node.gpu_free_milli) if f == 1000]
            kind = GangKind.SERVING if rng.random() < 0.45 else GangKind.FINETUNE
            share = kind == GangKind.SERVING and rng.random() < 0.25
            idx: tuple[int, ...]
            if share:
                part = [g for g, f in enumerate(node.gpu_free_milli) if f >= 500]
                if not part:
                    break
                gpus, milli, idx = 1, 500, (part[0],)
            else:
                size = rng.choice([1, 2, 4, 4, 8])
                if len(free) < size:
                    size = len(free)
                if size == 0:
                    break
                gpus, milli, idx = size, 1000, tuple(free[:size])
            uid = f"run-{len(running):05d}"
            pod = PodRequest(f"{uid}-0", 2000 * gpus, 16 * 1024 * gpus, gpus, milli)
            for g in idx:
                node.gpu_free_milli[g] -= milli
            node.cpu_free_milli -= pod.cpu_milli
            node.mem_free_mib -= pod.mem_mib
            svc = ""
            if kind == GangKind.SERVING:
                svc = f"svc-{rng.randrange(n_services):02d}"
                replicas[svc] = replicas.get(svc, 0) + 1
            prio = rng.choice(classes[:-1]) if kind == GangKind.FINETUNE else rng.choice(classes)
            running.append(
                RunningGang(
                    uid,
                    (pod,),
                    (Placement(pod.name, node.name, idx),),
                    priority=prio,
                    kind=kind,
                    preemptible=kind == GangKind.FINETUNE and rng.random() < 0.8,
                    started_s=NOW - rng.uniform(3600, 86400),
                    last_checkpoint_s=NOW - rng.uniform(0, 3600) if kind == GangKind.FINETUNE else None,
                    service=svc,
                )
            )
    for svc, n in replicas.items():
        services[svc] = ServiceBudget(svc, max(1, n // 2), n, rng.choice([1, 1, 2, 3]))
    pending: list[Gang] = []
    for j in range(max(4, n_nodes // 8)):
        prio = rng.choice(classes)
        top = prio == classes[-1]
        shape = rng.choice(["share", "small", "node", "multi"] if top else ["share", "small", "small", "node"])
        pods: tuple[PodRequest, ...]
        if shape == "share":
            pods = (PodRequest(f"p{j}-0", 2000, 8192, 1, rng.choice([300, 500])),)
        elif shape == "small":
            g = rng.choice([1, 2, 4])
            pods = (PodRequest(f"p{j}-0", 2000 * g, 16384 * g, g),)
        elif shape == "node":
            pods = (PodRequest(f"p{j}-0", 16000, 131072, 8),)
        else:
            pods = tuple(PodRequest(f"p{j}-{k}", 16000, 131072, 8) for k in range(rng.choice([2, 2, 4])))
        pending.append(
            Gang(
                f"gang-{j:03d}",
                pods,
                priority=prio,
                kind=GangKind.SERVING if rng.random() < 0.5 else GangKind.FINETUNE,
                gpu_products=frozenset([PRODUCTS[1]]) if rng.random() < 0.15 else frozenset(),
                topology_key=RACK if len(pods) > 1 else "",
                created_s=NOW - rng.uniform(0, 600),
            )
        )
    assert all(by_name)
    return ClusterSnapshot(nodes, running, pending, services)


def _placed_gpus(snapshot: ClusterSnapshot, plan: Plan) -> dict[int, float]:
    out: dict[int, float] = {}
    for g in snapshot.pending:
        if plan.decision(g.uid).verdict in (Verdict.BOUND, Verdict.NOMINATED):
            out[g.priority] = out.get(g.priority, 0.0) + g.gpu_total_milli / 1000
    return out


def run_scenario(seed: int, n_nodes: int, budget_s: float) -> ScenarioResult:
    """Decide one scenario with greedy placement and with Ebbtide; compare high-priority GPUs placed."""
    snap = generate(seed, n_nodes)
    exact_cfg = ExactConfig(time_budget_s=budget_s, seed=seed)
    greedy = Packer(PackerConfig(exact=False, exact_config=exact_cfg)).decide(snap, NOW)
    start = time.perf_counter()
    ebb = Packer(PackerConfig(exact=True, exact_config=exact_cfg), clock=time.perf_counter).decide(snap, NOW)
    took = time.perf_counter() - start
    classes = sorted({g.priority for g in snap.pending})
    top = classes[-1]
    pg, pe = _placed_gpus(snap, greedy), _placed_gpus(snap, ebb)
    rank = {p: i + 1 for i, p in enumerate(classes)}
    return ScenarioResult(
        seed=seed,
        nodes=n_nodes,
        classes=len(classes),
        high_gpus_greedy=pg.get(top, 0.0),
        high_gpus_ebbtide=pe.get(top, 0.0),
        weighted_greedy=sum(rank[p] * v for p, v in pg.items()),
        weighted_ebbtide=sum(rank[p] * v for p, v in pe.items()),
        evictions_greedy=len(greedy.evictions),
        evictions_ebbtide=len(ebb.evictions),
        solves=len(ebb.solver),
        greedy_missed_high=any(
            g.priority == top and greedy.decision(g.uid).verdict == Verdict.WAITING for g in snap.pending
        ),
        statuses=[r.status.value for r in ebb.solver],
        max_solve_s=max([r.solve_s for r in ebb.solver], default=0.0),
        ebbtide_s=took,
    )


@dataclass(frozen=True)
class SuiteSummary:
    """Aggregates over one size bucket."""

    bucket: str
    scenarios: int
    failure_cases: int  # scenarios where greedy left a schedulable top-priority gang waiting
    more_high_in_failures: float
    more_high: float
    equal_high: float
    fewer_high: float
    with_solves: int
    certified: float
    mean_evictions_greedy: float
    mean_evictions_ebbtide: float
    p50_decision_s: float
    max_decision_s: float


def summarize(results: list[ScenarioResult], bucket: str) -> SuiteSummary:
    """Shares over the scenarios of one bucket (certified share over scenarios where CP-SAT ran)."""
    n = len(results)
    solved = [r for r in results if r.solves]
    failures = [r for r in results if r.greedy_missed_high]
    return SuiteSummary(
        bucket=bucket,
        scenarios=n,
        failure_cases=len(failures),
        more_high_in_failures=sum(r.high_gpus_ebbtide > r.high_gpus_greedy for r in failures) / max(len(failures), 1),
        more_high=sum(r.high_gpus_ebbtide > r.high_gpus_greedy for r in results) / max(n, 1),
        equal_high=sum(r.high_gpus_ebbtide == r.high_gpus_greedy for r in results) / max(n, 1),
        fewer_high=sum(r.high_gpus_ebbtide < r.high_gpus_greedy for r in results) / max(n, 1),
        with_solves=len(solved),
        certified=sum(r.certified for r in solved) / max(len(solved), 1),
        mean_evictions_greedy=statistics.fmean([r.evictions_greedy for r in results]) if results else 0.0,
        mean_evictions_ebbtide=statistics.fmean([r.evictions_ebbtide for r in results]) if results else 0.0,
        p50_decision_s=statistics.median([r.ebbtide_s for r in results]) if results else 0.0,
        max_decision_s=max([r.ebbtide_s for r in results], default=0.0),
    )
