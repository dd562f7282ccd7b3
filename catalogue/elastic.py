"""How long an elastic expert-parallel resize takes, phase by phase, following vLLM 0.32.0's elastic EP.

Pure and deterministic. vLLM resizes in two steps (docs/engines.md): *prepare*, while the instance keeps serving
(joining ranks start without reading weights from storage, then each existing rank streams its whole weight shard
to the joiners it is paired with; on scale-down the survivors only build their new process groups), and *commit*,
during which the HTTP server answers 503 to everything (joiners warm up and the groups switch; on scale-down the
survivors first pull the experts of the retiring ranks: an EPLB rebalance). Scale-up's own rebalance runs
asynchronously after the commit and blocks nothing. The constants are fitted to the totals quoted in issue 17 for
DeepSeek-V2-Lite (about 31 s up, 7 s down); the split between phases is this model's assumption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from catalogue.models import ModelSpec


@dataclass(frozen=True)
class ElasticCalibration:
    """Constants of the resize model; every bandwidth is GB/s per sending GPU."""

    joiner_init_s: float = 20.0  # a joining engine core: process, dummy weights, process groups, profiling
    peer_gbps: float = 25.0  # rank-to-rank weight stream (NCCL over NVLink/RDMA, achieved)
    commit_up_s: float = 10.0  # the 503 window of a scale-up: joiners warm up (graphs), groups switch
    prepare_down_s: float = 2.0  # survivors build the smaller process groups while serving
    commit_down_s: float = 4.5  # the 503 window of a scale-down, besides moving the retiring ranks' experts

    def __post_init__(self) -> None:
        for name in ("joiner_init_s", "commit_up_s", "prepare_down_s", "commit_down_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ElasticCalibration.{name} must not be negative, got {getattr(self, name)}")
        if self.peer_gbps <= 0:
            raise ValueError(f"ElasticCalibration.peer_gbps must be positive, got {self.peer_gbps}")


DEFAULT_ELASTIC = ElasticCalibration()


def expert_bytes(model: ModelSpec) -> float:
    """Bytes of one routed expert over all MoE layers (what moves when an expert changes GPU)."""
    return model.expert_params_b * 1e9 * model.dtype_bytes


def rank_weight_bytes(model: ModelSpec, physical_experts_per_rank: int, tensor_parallel: int = 1) -> float:
    """Weight bytes one data-parallel rank holds: shared layers plus its expert slots (split over its TP GPUs)."""
    shared = model.shared_params_b * 1e9 * model.dtype_bytes
    return (shared + physical_experts_per_rank * expert_bytes(model)) / tensor_parallel


def receivers_per_sender(old_ranks: int, new_ranks: int) -> int:
    """Joiners the busiest existing rank streams its weights to (vLLM pairs senders with contiguous joiners)."""
    if new_ranks <= old_ranks:
        return 0
    return math.ceil((new_ranks - old_ranks) / old_ranks)


@dataclass(frozen=True)
class ResizeTimings:
    """The two phases of one resize, seconds: prepare (serving continues) and commit (every request gets 503)."""

    prepare_s: float
    commit_s: float

    @property
    def total_s(self) -> float:
        """From the scale request to serving at the new width."""
        return self.prepare_s + self.commit_s


def resize_timings(
    model: ModelSpec,
    old_ranks: int,
    new_ranks: int,
    physical_experts_per_rank: int,
    *,
    tensor_parallel: int = 1,
    moved_expert_bytes_per_rank: float | None = None,
    cal: ElasticCalibration = DEFAULT_ELASTIC,
) -> ResizeTimings:
    """Prepare and commit times of a resize from old_ranks to new_ranks data-parallel ranks.

    moved_expert_bytes_per_rank: on scale-down, the most expert bytes any survivor receives in the rebalance;
    by default the retiring ranks' experts spread evenly over the survivors."""
    if old_ranks < 1 or new_ranks < 1:
        raise ValueError(f"rank counts must be positive, got {old_ranks} -> {new_ranks}")
    if new_ranks == old_ranks:
        return ResizeTimings(0.0, 0.0)
    per_gpu_bps = cal.peer_gbps * 1e9
    if new_ranks > old_ranks:
        shard = rank_weight_bytes(model, physical_experts_per_rank, tensor_parallel)
        stream = receivers_per_sender(old_ranks, new_ranks) * shard / per_gpu_bps
        return ResizeTimings(cal.joiner_init_s + stream, cal.commit_up_s)
    if moved_expert_bytes_per_rank is None:
        retiring = (old_ranks - new_ranks) * physical_experts_per_rank * expert_bytes(model)
        moved_expert_bytes_per_rank = retiring / new_ranks
    rebalance = moved_expert_bytes_per_rank / tensor_parallel / per_gpu_bps
    return ResizeTimings(cal.prepare_down_s, cal.commit_down_s + rebalance)
