"""Seed capacity of one replica at the SLO, estimated from the simulator's calibrated performance model.

The capacity learner starts here and corrects itself online from observed (load, latency) pairs.
"""

from __future__ import annotations

from autoscaler.capacity import EngineProfile
from autoscaler.types import SLO
from catalogue.gpus import GPUProfile
from catalogue.models import ModelSpec
from catalogue.perf import PerfModel

# Mean request shape of the Azure LLM 2023 conversation trace (context and generated tokens).
DEFAULT_PROMPT_TOKENS = 1020
DEFAULT_OUTPUT_TOKENS = 230
# Plan each step to use this share of the ITL target, leaving room for prefill chunks mixed in.
ITL_HEADROOM = 0.8


def engine_profile(
    model: ModelSpec,
    gpu: GPUProfile,
    tensor_parallel: int,
    slo: SLO,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    max_batch: int = 256,
    *,
    expert_parallel: int = 1,
) -> EngineProfile:
    """Requests/s one replica sustains with decode steps inside the ITL target and the KV cache not full
    (expert_parallel: MoE ranks of tensor_parallel GPUs each)."""
    perf = PerfModel(model, gpu, tensor_parallel, expert_parallel=expert_parallel)
    per_request_kv = prompt_tokens + output_tokens // 2
    best = 1
    for batch in range(1, max_batch + 1):
        if batch * (prompt_tokens + output_tokens) > perf.kv_capacity_tokens:
            break
        if perf.decode_step_seconds(batch, batch * per_request_kv) > slo.itl_s * ITL_HEADROOM:
            break
        best = batch
    step = perf.decode_step_seconds(best, best * per_request_kv)
    # Each request costs its prefill time plus its share of the batch's decode steps.
    seconds_per_request = perf.prefill_seconds(prompt_tokens) + output_tokens * step / best
    rate = 1.0 / seconds_per_request
    return EngineProfile(
        request_rate=rate,
        prompt_token_rate=rate * prompt_tokens,
        generation_token_rate=rate * output_tokens,
        ttft_s=perf.prefill_seconds(prompt_tokens),
        itl_s=perf.decode_step_seconds(1, per_request_kv),
    )
