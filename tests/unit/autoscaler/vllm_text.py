"""vLLM-format Prometheus exposition text for the metric tests (names, labels and buckets as vLLM v1 emits)."""

from __future__ import annotations

from collections.abc import Sequence

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


def _hist(
    name: str, help_: str, bounds: Sequence[float], cumulative: Sequence[float], total: float, engine: str
) -> str:
    labels = f'engine="{engine}",model_name="{MODEL}"'
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    for b, c in zip(bounds, cumulative, strict=True):
        lines.append(f'{name}_bucket{{engine="{engine}",le="{b}",model_name="{MODEL}"}} {float(c)}')
    lines.append(f'{name}_bucket{{engine="{engine}",le="+Inf",model_name="{MODEL}"}} {float(cumulative[-1])}')
    lines.append(f"{name}_count{{{labels}}} {float(cumulative[-1])}")
    lines.append(f"{name}_sum{{{labels}}} {total}")
    return "\n".join(lines)


def exposition(
    *,
    running: float = 3.0,
    waiting: float = 1.0,
    kv: float = 0.25,
    prompt: float = 50_000.0,
    generation: float = 15_000.0,
    success_stop: float = 90.0,
    success_length: float = 10.0,
    ttft: Sequence[float] | None = None,
    itl: Sequence[float] | None = None,
    engine: str = "0",
    v0_names: bool = False,
) -> str:
    """One engine's /metrics page; `ttft`/`itl` are cumulative bucket counts (defaults: everything fast)."""
    labels = f'engine="{engine}",model_name="{MODEL}"'
    ttft = ttft if ttft is not None else [0, 0, 0, 0, 0, 0, 0, 10, 60, 90, 95, 100, 100, 100, 100, 100]
    itl = (
        itl if itl is not None else [0, 500, 9000, 9900, 10000, 10000, 10000, 10000, 10000, 10000, 10000, 10000, 10000]
    )
    kv_name = "vllm:gpu_cache_usage_perc" if v0_names else "vllm:kv_cache_usage_perc"
    itl_name = "vllm:time_per_output_token_seconds" if v0_names else "vllm:inter_token_latency_seconds"
    parts = [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 12345.0',
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} {running}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{labels}}} {waiting}",
        f"# HELP {kv_name} KV-cache usage. 1 means 100 percent usage.",
        f"# TYPE {kv_name} gauge",
        f"{kv_name}{{{labels}}} {kv}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{labels}}} {prompt}",
        f"vllm:prompt_tokens_created{{{labels}}} 1.7318e+09",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{labels}}} {generation}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{engine="{engine}",finished_reason="stop",model_name="{MODEL}"}} {success_stop}',
        f'vllm:request_success_total{{engine="{engine}",finished_reason="length",model_name="{MODEL}"}} '
        f"{success_length}",
        f'vllm:request_success_total{{engine="{engine}",finished_reason="abort",model_name="{MODEL}"}} 0.0',
        _hist(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
            ttft,
            25.0,
            engine,
        ),
        _hist(itl_name, "Histogram of inter-token latency in seconds.", ITL_BUCKETS, itl, 420.0, engine),
    ]
    return "\n".join(parts) + "\n"
