"""Expert layouts for elastic expert parallelism: which logical expert sits in which physical slot of which rank.

Pure and deterministic: no I/O, no clock. Two layouts come out of the same load-aware rule (the one vLLM's
EPLB follows: hot experts get the spare slots as replicas, replicas are packed so every rank carries about the
same load):

- `eplb_layout` computes it from scratch, with no regard for where experts sit now; this is what an engine's own
  rebalance does, and the baseline the benchmark compares against.
- `plan_layout` computes it for a width change and moves the fewest expert bytes from the current layout: it
  builds the balanced groups of replicas, then assigns groups to ranks by a minimum-cost assignment (OR-Tools'
  linear sum assignment) over "experts a rank would have to receive", and also tries keeping every expert where
  it is and filling only the gaps; the cheaper of the two wins as long as its heaviest rank stays within
  `balance_tolerance` of the from-scratch layout's.

Ranks follow vLLM's elastic EP: the number of physical slots per rank is fixed for the instance's life, scale-up
appends ranks whose first weights are a copy of the shard of the existing rank that streams to them (senders are
paired with contiguous joiners), and scale-down retires the highest ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from catalogue.elastic import expert_bytes, rank_weight_bytes
from catalogue.gpus import GPUProfile
from catalogue.models import ModelSpec


class LayoutRefused(ValueError):
    """A width the model cannot take; the message carries the numbers."""


@dataclass(frozen=True)
class ExpertLayout:
    """Per rank, the logical expert held in each physical slot."""

    ranks: tuple[tuple[int, ...], ...]

    @property
    def width(self) -> int:
        """Number of ranks."""
        return len(self.ranks)

    def replicas(self, experts: int) -> list[int]:
        """How many physical copies each logical expert has."""
        counts = [0] * experts
        for slots in self.ranks:
            for e in slots:
                counts[e] += 1
        return counts

    def rank_loads(self, load: Sequence[float]) -> list[float]:
        """Load each rank serves, an expert's load split evenly over its replicas."""
        counts = self.replicas(len(load))
        return [sum(load[e] / counts[e] for e in slots) for slots in self.ranks]

    def as_lists(self) -> list[list[int]]:
        """A JSON-friendly copy."""
        return [list(slots) for slots in self.ranks]


def contiguous_layout(experts: int, ranks: int) -> ExpertLayout:
    """The layout an engine starts with: experts split in order, no replicas (requires divisibility)."""
    if ranks < 1 or experts % ranks:
        raise LayoutRefused(f"{experts} experts cannot be split evenly over {ranks} ranks")
    per = experts // ranks
    return ExpertLayout(tuple(tuple(range(r * per, (r + 1) * per)) for r in range(ranks)))


def sender_of(joiner: int, old_ranks: int, new_ranks: int) -> int:
    """The existing rank that streams its weights to `joiner` during a scale-up (vLLM's contiguous pairing)."""
    joiners = new_ranks - old_ranks
    base, extra = divmod(joiners, old_ranks)
    offset = joiner - old_ranks
    if not 0 <= offset < joiners:
        raise ValueError(f"rank {joiner} does not join a scale from {old_ranks} to {new_ranks}")
    # The first `extra` senders take base + 1 joiners each, the rest take base.
    if offset < extra * (base + 1):
        return offset // (base + 1)
    return extra + (offset - extra * (base + 1)) // base


def starting_layout(current: ExpertLayout, new_ranks: int) -> ExpertLayout:
    """What each rank of the new width holds before any rebalance: survivors keep theirs, joiners copy a sender."""
    old = current.width
    if new_ranks <= old:
        return ExpertLayout(current.ranks[:new_ranks])
    joiners = tuple(current.ranks[sender_of(j, old, new_ranks)] for j in range(old, new_ranks))
    return ExpertLayout(current.ranks + joiners)


def replica_counts(load: Sequence[float], total_slots: int) -> list[int]:
    """One copy per expert, then each spare slot to the expert with the highest load per copy (ties: lowest id)."""
    experts = len(load)
    if total_slots < experts:
        raise LayoutRefused(f"{experts} experts need {experts} slots, the layout has {total_slots}")
    counts = [1] * experts
    for _ in range(total_slots - experts):
        # 1. highest load per copy; 2. lowest expert id.
        best = min(range(experts), key=lambda e: (-load[e] / counts[e], e))
        counts[best] += 1
    return counts


def _balanced_groups(load: Sequence[float], counts: Sequence[int], ranks: int, slots: int) -> list[list[int]]:
    """Pack replicas into `ranks` groups of `slots`: heaviest replica first onto the lightest group with room."""
    replicas = sorted(
        ((load[e] / counts[e], e) for e in range(len(load)) for _ in range(counts[e])),
        key=lambda item: (-item[0], item[1]),  # 1. heavier first; 2. lower expert id
    )
    groups: list[list[int]] = [[] for _ in range(ranks)]
    weights = [0.0] * ranks
    for weight, e in replicas:
        open_groups = [g for g in range(ranks) if len(groups[g]) < slots]
        # 1. a group without this expert yet; 2. lightest; 3. lowest index.
        g = min(open_groups, key=lambda i: (e in groups[i], weights[i], i))
        groups[g].append(e)
        weights[g] += weight
    return groups


def eplb_layout(load: Sequence[float], ranks: int, slots_per_rank: int) -> ExpertLayout:
    """The load-balanced layout computed from scratch (group g on rank g), blind to the current placement."""
    counts = replica_counts(load, ranks * slots_per_rank)
    groups = _balanced_groups(load, counts, ranks, slots_per_rank)
    return ExpertLayout(tuple(tuple(sorted(g)) for g in groups))


def _missing(group: Sequence[int], held: Sequence[int]) -> int:
    """Experts of `group` a rank holding `held` must receive (multiset difference)."""
    have = list(held)
    missing = 0
    for e in group:
        if e in have:
            have.remove(e)
        else:
            missing += 1
    return missing


def _assign_groups(groups: list[list[int]], start: ExpertLayout) -> list[list[int]]:
    """Give each group to the rank that already holds most of it (minimum total experts received)."""
    from ortools.graph.python import linear_sum_assignment  # compiled; only width changes need it

    n = len(groups)
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    for g, group in enumerate(groups):
        for r in range(n):
            solver.add_arc_with_cost(g, r, _missing(group, start.ranks[r]))
    if solver.solve() != solver.OPTIMAL:
        raise RuntimeError("the group-to-rank assignment has no optimal solution")  # cannot happen: square, dense
    by_rank: list[list[int]] = [[] for _ in range(n)]
    for g in range(n):
        by_rank[solver.right_mate(g)] = groups[g]
    return by_rank


def _keep_and_fill(load: Sequence[float], counts: Sequence[int], start: ExpertLayout, slots: int) -> list[list[int]]:
    """Keep every copy the new counts allow where it already is; place the rest on the lightest ranks."""
    ranks = start.width
    kept: list[list[int]] = [[] for _ in range(ranks)]
    weights = [0.0] * ranks
    left = list(counts)
    holders: dict[int, list[int]] = {}
    for r in range(ranks):
        for e in start.ranks[r]:
            holders.setdefault(e, []).append(r)
    # Heaviest experts first, each copy kept on the lightest rank that already holds it.
    for e in sorted(holders, key=lambda x: (-load[x] / counts[x], x)):
        for _ in range(min(left[e], len(set(holders[e])))):
            r = min((h for h in holders[e] if e not in kept[h]), key=lambda h: (weights[h], h))
            kept[r].append(e)
            weights[r] += load[e] / counts[e]
            left[e] -= 1
    todo = sorted(
        ((load[e] / counts[e], e) for e in range(len(load)) for _ in range(left[e])), key=lambda t: (-t[0], t[1])
    )
    for weight, e in todo:
        open_ranks = [r for r in range(ranks) if len(kept[r]) < slots]
        r = min(open_ranks, key=lambda i: (e in kept[i], weights[i], i))
        kept[r].append(e)
        weights[r] += weight
    return kept


def _order_slots(new: Sequence[int], held: Sequence[int]) -> tuple[int, ...]:
    """Put each kept expert back in its old slot so only received experts change slots."""
    out: list[int | None] = [None] * len(new)
    pending = list(new)
    for i, e in enumerate(held[: len(new)]):
        if e in pending:
            out[i] = e
            pending.remove(e)
    fill = iter(sorted(pending))
    return tuple(e if e is not None else next(fill) for e in out)


@dataclass(frozen=True)
class ExpertMove:
    """One expert copied onto a rank, and the rank it is read from (the lowest-numbered current holder)."""

    expert: int
    to_rank: int
    from_rank: int


@dataclass(frozen=True)
class LayoutPlan:
    """A width change: the new layout, what moves, which ranks join or retire, and why."""

    old_width: int
    new_width: int
    layout: ExpertLayout
    moves: tuple[ExpertMove, ...]
    bytes_moved: float
    scratch_bytes_moved: float  # what the from-scratch EPLB layout would move from the same start
    add_ranks: tuple[int, ...]
    retire_ranks: tuple[int, ...]
    max_rank_load: float
    mean_rank_load: float
    explanation: tuple[str, ...] = field(default_factory=tuple)

    @property
    def balancedness(self) -> float:
        """Mean over maximum rank load (1.0 is perfect), as vLLM's EPLB log reports it."""
        return self.mean_rank_load / self.max_rank_load if self.max_rank_load > 0 else 1.0


def _moves(layout: ExpertLayout, start: ExpertLayout, current: ExpertLayout) -> list[ExpertMove]:
    moves = []
    for r, slots in enumerate(layout.ranks):
        have = list(start.ranks[r]) if r < start.width else []
        for e in slots:
            if e in have:
                have.remove(e)
                continue
            source = min(
                (s for s in range(min(current.width, layout.width)) if e in current.ranks[s]),
                default=min(s for s in range(current.width) if e in current.ranks[s]),
            )
            moves.append(ExpertMove(e, r, source))
    return moves


def check_width(
    model: ModelSpec,
    gpu: GPUProfile,
    new_width: int,
    slots_per_rank: int,
    *,
    tensor_parallel: int = 1,
    free_gpus: int | None = None,
    current_width: int = 0,
    gpu_memory_utilization: float = 0.9,
    activation_reserve_gb: float = 2.0,
) -> None:
    """Refuse a width the model cannot take, with the numbers: too few slots, too little HBM, too few GPUs."""
    experts = model.experts
    if model.architecture != "moe" or experts == 0:
        raise LayoutRefused(f"{model.name} is a dense model; it has no experts to lay out")
    if new_width < 1:
        raise LayoutRefused(f"the width must be at least 1 rank, got {new_width}")
    if new_width * slots_per_rank < experts:
        need = math.ceil(experts / slots_per_rank)
        raise LayoutRefused(
            f"{experts} experts do not fit {new_width} ranks x {slots_per_rank} expert slots "
            f"= {new_width * slots_per_rank} slots; the minimum width is {need}"
        )
    need_gb = rank_weight_bytes(model, slots_per_rank, tensor_parallel) / 1e9 + activation_reserve_gb
    have_gb = gpu_memory_utilization * gpu.memory_gb
    if need_gb > have_gb:
        raise LayoutRefused(
            f"a rank of {slots_per_rank} expert slots needs {need_gb:.1f} GB per GPU (weights plus "
            f"{activation_reserve_gb:g} GB reserve over {tensor_parallel} GPU(s)) but {gpu.product} offers "
            f"{have_gb:.1f} GB at gpu_memory_utilization {gpu_memory_utilization:g}"
        )
    joining_gpus = max(0, new_width - current_width) * tensor_parallel
    if free_gpus is not None and joining_gpus > free_gpus:
        raise LayoutRefused(
            f"widening from {current_width} to {new_width} ranks needs {joining_gpus} GPUs for the joining "
            f"ranks ({tensor_parallel} per rank) but only {free_gpus} are free"
        )


def plan_layout(
    load: Sequence[float],
    current: ExpertLayout,
    new_width: int,
    expert_size_bytes: float,
    *,
    balance_tolerance: float = 0.05,
) -> LayoutPlan:
    """The layout for new_width ranks (slots per rank as today) that moves the fewest expert bytes from `current`.

    `load` is each logical expert's recent token count (any non-negative scale). Refuses (LayoutRefused) a
    width whose slots cannot hold every expert once."""
    experts = len(load)
    if experts == 0 or any(not math.isfinite(x) or x < 0 for x in load):
        raise LayoutRefused("per-expert load must be a non-empty list of finite, non-negative numbers")
    if current.width == 0 or len({len(s) for s in current.ranks}) != 1:
        raise LayoutRefused("the current layout must have at least one rank and the same slots on every rank")
    if sorted(set(e for s in current.ranks for e in s)) != list(range(experts)):
        raise LayoutRefused(f"the current layout must hold every one of the {experts} experts of the load vector")
    if new_width < 1:
        raise LayoutRefused(f"the width must be at least 1 rank, got {new_width}")
    slots = len(current.ranks[0])
    if new_width * slots < experts:
        raise LayoutRefused(
            f"{experts} experts do not fit {new_width} ranks x {slots} expert slots = {new_width * slots} slots; "
            f"the minimum width is {math.ceil(experts / slots)}"
        )
    # An idle model still needs a layout: treat no load as equal load.
    weights = list(load) if sum(load) > 0 else [1.0] * experts
    start = starting_layout(current, new_width)
    counts = replica_counts(weights, new_width * slots)
    groups = _balanced_groups(weights, counts, new_width, slots)
    scratch = ExpertLayout(tuple(tuple(g) for g in groups))
    bound = max(scratch.rank_loads(weights)) * (1 + balance_tolerance)
    candidates = {
        "assignment": _assign_groups(groups, start),
        "keep-and-fill": _keep_and_fill(weights, counts, start, slots),
    }
    scored = []
    for name, ranks in candidates.items():
        layout = ExpertLayout(tuple(_order_slots(ranks[r], start.ranks[r]) for r in range(new_width)))
        moved = sum(_missing(layout.ranks[r], start.ranks[r]) for r in range(new_width))
        heaviest = max(layout.rank_loads(weights))
        scored.append((heaviest > bound + 1e-12, moved, heaviest, name, layout))
    # 1. within the balance bound; 2. fewest experts moved; 3. lighter heaviest rank; 4. name.
    over, moved, heaviest, chosen, layout = min(scored, key=lambda t: (t[0], t[1], t[2], t[3]))
    scratch_moved = sum(_missing(scratch.ranks[r], start.ranks[r]) for r in range(new_width))
    loads = layout.rank_loads(weights)
    old = current.width
    add = tuple(range(old, new_width))
    retire = tuple(range(new_width, old))
    why = [
        f"{experts} experts on {new_width} ranks x {slots} slots: {new_width * slots - experts} replicas "
        f"go to the hottest experts ({sum(1 for c in counts if c > 1)} experts replicated)",
        f"chose {chosen}: {moved} expert(s) moved ({moved * expert_size_bytes / 1e9:.2f} GB) vs {scratch_moved} "
        f"({scratch_moved * expert_size_bytes / 1e9:.2f} GB) for the layout computed from scratch",
        f"heaviest rank {max(loads):.4g} vs mean {sum(loads) / len(loads):.4g} "
        f"(from scratch: {max(scratch.rank_loads(weights)):.4g}; tolerance {balance_tolerance:.0%})",
    ]
    if add:
        why.append(f"ranks {list(add)} join, each starting from a copy of its sender's shard")
    if retire:
        why.append(f"ranks {list(retire)} retire (the engine removes the highest ranks) once the resize commits")
    if over:
        why.append("no candidate met the balance bound; the least unbalanced of the cheapest was kept")
    moves = _moves(layout, start, current)
    return LayoutPlan(
        old_width=old,
        new_width=new_width,
        layout=layout,
        moves=tuple(moves),
        bytes_moved=moved * expert_size_bytes,
        scratch_bytes_moved=scratch_moved * expert_size_bytes,
        add_ranks=add,
        retire_ranks=retire,
        max_rank_load=max(loads),
        mean_rank_load=sum(loads) / len(loads),
        explanation=tuple(why),
    )


def plan_for_model(
    model: ModelSpec,
    gpu: GPUProfile,
    load: Sequence[float],
    current: ExpertLayout,
    new_width: int,
    *,
    tensor_parallel: int = 1,
    free_gpus: int | None = None,
    gpu_memory_utilization: float = 0.9,
) -> LayoutPlan:
    """`check_width` then `plan_layout` for a catalogue model on a GPU type."""
    if len(load) != model.experts:
        raise LayoutRefused(f"{model.name} has {model.experts} experts but the load vector has {len(load)}")
    slots = len(current.ranks[0]) if current.ranks else 0
    check_width(
        model,
        gpu,
        new_width,
        slots,
        tensor_parallel=tensor_parallel,
        free_gpus=free_gpus,
        current_width=current.width,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    return plan_layout(load, current, new_width, expert_bytes(model))
