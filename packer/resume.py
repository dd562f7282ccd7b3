"""Resume what-if: which preempted fine-tuning gangs fit on free capacity again, without preempting anyone.

A trial placement on a copy of the snapshot (nothing is bound, the snapshot is not changed). The waiting gangs are
placed together, in the packer's own order, so two jobs that each fit alone but not side by side do not both
resume. A gang keeps waiting while any higher-priority gang is pending: returning capacity goes to the more
important work first.
"""

from __future__ import annotations

from collections.abc import Sequence

from packer.packer import Packer, PackerConfig
from packer.plan import Verdict
from packer.snapshot import ClusterSnapshot, Gang

# Placement only: resuming never evicts anyone, and the greedy path answers within a scheduling pass.
WHAT_IF = PackerConfig(preemption=False, exact=False)


def resumable(snapshot: ClusterSnapshot, waiting: Sequence[Gang], now: float) -> list[str]:
    """The uids of the `waiting` gangs that may resume now, in the order given."""
    candidates = [g for g in waiting if not any(p.priority > g.priority for p in snapshot.pending)]
    if not candidates:
        return []
    trial = ClusterSnapshot(snapshot.nodes, snapshot.running, candidates, snapshot.services)
    plan = Packer(WHAT_IF).decide(trial, now)
    return [g.uid for g in candidates if plan.decision(g.uid).verdict == Verdict.BOUND]
