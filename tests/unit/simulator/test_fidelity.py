"""Fidelity: the simulator reproduces published LLM serving measurements within +-20%.

Each anchor is a published number with its source; the simulator's figure is computed here by running the
same workload through BatchScheduler and PerfModel with the default calibration. ANCHORS were used to set
the calibration constants; HOLDOUTS were not, and check that the fit generalises. docs/simulator.md shows
the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from catalogue.gpus import lookup_gpu
from catalogue.models import lookup_model
from catalogue.perf import PerfModel
from simulator.batching import BatchScheduler, SimRequest

TOLERANCE = 0.20

TRTLLM_PERF = (
    "NVIDIA TensorRT-LLM, docs/source/performance.md (release 0.6.1; low-latency table from 0.5)",
    "https://github.com/NVIDIA/TensorRT-LLM/blob/v0.6.1/docs/source/performance.md",
)
A100_SWEEP = (
    "John Musgrave, 'vLLM throughput-latency sweep on NVIDIA A100'",
    "https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on",
)
H100_SWEEP = (
    "InferenceBench, 'Recipe: concurrency sweep' (vLLM 0.21.0, H100-80GB-HBM3)",
    "https://yobitelcomm.github.io/bench/recipes/concurrency-sweep/",
)


def _perf(model: str, gpu: str, tp: int = 1) -> PerfModel:
    spec, profile = lookup_model(model), lookup_gpu(gpu)
    assert spec is not None and profile is not None
    return PerfModel(spec, profile, tp)


def _run(s: BatchScheduler) -> dict[str | int, list[float]]:
    """Token times per request when every request arrived at t=0."""
    t = 0.0
    times: dict[str | int, list[float]] = {}
    while s.has_work():
        r = s.step(t)
        t += r.duration_s
        for rid in r.tokens:
            times.setdefault(rid, []).append(t)
    return times


def first_token_ms(model: str, gpu: str, tp: int, prompt: int) -> float:
    """Batch-1 time to first token."""
    s = BatchScheduler(_perf(model, gpu, tp))
    s.add(SimRequest("r", prompt, 1))
    return _run(s)["r"][0] * 1e3


def output_tokens_per_s(model: str, gpu: str, tp: int, batch: int, prompt: int, output: int) -> float:
    """Offline throughput: `batch` requests at once, generated tokens / makespan."""
    s = BatchScheduler(_perf(model, gpu, tp), max_num_seqs=batch)
    for i in range(batch):
        s.add(SimRequest(i, prompt, output))
    times = _run(s)
    return batch * output / max(ts[-1] for ts in times.values())


def decode_tokens_per_s(model: str, gpu: str, prompt: int, output: int) -> float:
    """Concurrency-1 decode speed after the first token."""
    s = BatchScheduler(_perf(model, gpu))
    s.add(SimRequest("r", prompt, output))
    ts = _run(s)["r"]
    return (output - 1) / (ts[-1] - ts[0])


@dataclass(frozen=True)
class Anchor:
    """A published measurement and how to compute the simulator's figure for the same workload."""

    name: str
    source: tuple[str, str]  # (title, URL)
    workload: str
    published: float
    unit: str
    simulate: Callable[[], float]


ANCHORS = [
    Anchor(
        "ttft-llama2-7b-a100",
        TRTLLM_PERF,
        "Llama-2-7B FP16, 1x A100-SXM4-80GB, batch 1, 2,048 prompt tokens: 1st-token latency",
        133.0,
        "ms",
        lambda: first_token_ms("llama-2-7b", "A100", 1, 2048),
    ),
    Anchor(
        "ttft-llama2-70b-a100-tp4",
        TRTLLM_PERF,
        "Llama-2-70B FP16, 4x A100-SXM4-80GB (TP4), batch 1, 2,048 prompt tokens: 1st-token latency",
        377.0,
        "ms",
        lambda: first_token_ms("llama-2-70b", "A100", 4, 2048),
    ),
    Anchor(
        "throughput-llama2-7b-a100-b384",
        TRTLLM_PERF,
        "Llama-2-7B FP16, 1x A100-SXM4-80GB, batch 384, 128 in / 128 out: output throughput",
        5586.0,
        "tok/s",
        lambda: output_tokens_per_s("llama-2-7b", "A100", 1, 384, 128, 128),
    ),
    Anchor(
        "decode-llama31-8b-a100-40gb",
        A100_SWEEP,
        "vLLM, Llama-3.1-8B-Instruct BF16, 1x A100 40GB, 1,024 in / 128 out, concurrency 1: decode speed",
        75.0,
        "tok/s",
        lambda: decode_tokens_per_s("llama-3.1-8b", "A100-40GB", 1024, 128),
    ),
    Anchor(
        "tpot-llama31-8b-h100",
        H100_SWEEP,
        "vLLM, Llama-3.1-8B-Instruct FP16, 1x H100-80GB-HBM3, concurrency 1 (short chat prompts; "
        "simulated as 256 in / 128 out): median TPOT",
        6.48,
        "ms",
        lambda: 1e3 / decode_tokens_per_s("llama-3.1-8b", "H100", 256, 128),
    ),
]


# Rows of the same TensorRT-LLM A100 FP16 table that were not used to set the constants.
HOLDOUTS = [
    Anchor(
        "holdout-throughput-llama2-7b-a100-long-decode",
        TRTLLM_PERF,
        "Llama-2-7B FP16, 1x A100-SXM4-80GB, batch 60, 128 in / 2,048 out: output throughput",
        1928.0,
        "tok/s",
        lambda: output_tokens_per_s("llama-2-7b", "A100", 1, 60, 128, 2048),
    ),
    Anchor(
        "holdout-throughput-llama2-7b-a100-long-prompt",
        TRTLLM_PERF,
        "Llama-2-7B FP16, 1x A100-SXM4-80GB, batch 52, 2,048 in / 128 out: output throughput",
        591.0,
        "tok/s",
        lambda: output_tokens_per_s("llama-2-7b", "A100", 1, 52, 2048, 128),
    ),
]


def fidelity_table() -> list[tuple[Anchor, float, float]]:
    """(anchor, simulated figure, relative error) for every anchor and holdout."""
    rows = []
    for anchor in [*ANCHORS, *HOLDOUTS]:
        simulated = anchor.simulate()
        rows.append((anchor, simulated, simulated / anchor.published - 1.0))
    return rows


def test_at_least_three_independent_anchors() -> None:
    assert len(ANCHORS) >= 3
    assert len({a.source for a in ANCHORS}) >= 3


@pytest.mark.parametrize("anchor", [*ANCHORS, *HOLDOUTS], ids=[a.name for a in [*ANCHORS, *HOLDOUTS]])
def test_simulator_matches_published_measurement(anchor: Anchor) -> None:
    simulated = anchor.simulate()
    assert simulated == pytest.approx(anchor.published, rel=TOLERANCE), (
        f"{anchor.workload}: simulated {simulated:.2f} {anchor.unit}, published {anchor.published} {anchor.unit}"
    )


if __name__ == "__main__":
    for a, sim, err in fidelity_table():
        print(f"| {a.workload} | {a.published:g} {a.unit} | {sim:.1f} {a.unit} | {err:+.1%} |")
