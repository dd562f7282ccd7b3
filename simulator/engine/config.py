"""The simulated engine's command line and the typed configuration it produces.

`parse_args(argv)` never exits the process: every problem raises EngineConfigError with a message that
names the flag, so a fleet running many engines in one process can report it, and `python -m
simulator.engine` prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NoReturn

from catalogue.gpus import GPUProfile, known_gpu_names, lookup_gpu
from catalogue.models import ModelSpec, known_model_names, lookup_model, resolve_model
from catalogue.perf import DEFAULT_CALIBRATION, Calibration, PerfModel
from catalogue.power import PowerLimitError, validate_power_limit
from simulator.batching import Role
from simulator.engine.metrics import MetricNames

Mode = Literal["serve", "trainer"]

# `--gpu auto` takes the product from here (the node's nvidia.com/gpu.product label, set by whoever starts the pod).
GPU_PRODUCT_ENV = "EBBTIDE_GPU_PRODUCT"
# vLLM reads this to wait for in-flight requests before committing an elastic resize (0.32.0, vllm/envs.py).
DRAIN_ENV = "VLLM_ELASTIC_EP_DRAIN_REQUESTS"


class EngineConfigError(ValueError):
    """A command line the engine cannot start with; the message names the offending flag."""


@dataclass(frozen=True)
class EngineConfig:
    """Everything one simulated engine (serving or trainer) needs to start."""

    model: ModelSpec  # resolved architecture
    model_arg: str  # --model exactly as given (vLLM's default served name)
    gpu: GPUProfile
    served_model_names: tuple[str, ...]  # names requests may use in their `model` field
    mode: Mode = "serve"
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    expert_parallel: int = 1
    host: str = "0.0.0.0"
    port: int = 8000
    seed: int = 0
    time_scale: float = 1.0  # virtual seconds per wall second
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 4096  # longest prompt + completion accepted
    gpu_memory_utilization: float = 0.9
    role: Role = "both"
    power_limit_w: float | None = None  # initial per-GPU limit; None = TDP
    expert_load_gbps: float = 25.0  # rank-to-rank weight bandwidth during an elastic resize, GB/s per sender
    expert_load_skew: float = 1.0  # how unevenly the simulated router picks experts (0 = uniform)
    enable_eplb: bool = False  # vLLM's --enable-eplb
    enable_elastic_ep: bool = False  # vLLM's --enable-elastic-ep (SGLang: --elastic-ep-backend)
    elastic_ep_max_dp_size: int | None = None  # vLLM's --elastic-ep-max-dp-size (default: the starting width)
    drain_before_scale: bool = False  # vLLM's VLLM_ELASTIC_EP_DRAIN_REQUESTS=1: wait for requests before a commit
    return_routed_experts: bool = False  # vLLM's --enable-return-routed-experts
    total_steps: int = 0  # trainer: steps in the run
    step_seconds: float = 1.0  # trainer: seconds per step at the default power limit
    start_step: int = 0  # trainer: step to start from (the `latest` checkpoint, or --resume-from)
    resumed: bool = False  # trainer: start_step comes from a checkpoint
    resume_from: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_interval_steps: int = 0  # trainer: checkpoint every N steps (0: only on SIGTERM and at the end)
    rank: int = 0  # trainer: the worker's rank; only rank 0 writes the job's folder
    enable_lora: bool = False  # vLLM's --enable-lora
    lora_modules: tuple[tuple[str, str], ...] = ()  # vLLM's --lora-modules name=path, loaded at start
    max_lora_rank: int = 16  # vLLM's --max-lora-rank
    runtime_lora_updating: bool = False  # VLLM_ALLOW_RUNTIME_LORA_UPDATING: serve the load/unload routes
    models_root: str | None = None  # where the pod's /models mount lives on this machine (the fleet's storage)
    shutdown_timeout_s: int = 0  # vLLM's --shutdown-timeout: seconds to finish in-flight work after SIGTERM
    metric_names: MetricNames = "vllm"  # whose /metrics names to export: vLLM's, or SGLang's
    fail_after_s: float | None = None  # fault injection: virtual seconds after start until the engine core dies
    calibration: Calibration = DEFAULT_CALIBRATION

    @property
    def speaks_sglang(self) -> bool:
        """Whether the engine plays SGLang (its metric names, or its /metrics switched off) for elastic EP too."""
        return self.metric_names in ("sglang", "none")

    @property
    def served_model_name(self) -> str:
        """The first served name, used in responses and metric labels."""
        return self.served_model_names[0]

    def perf_model(self) -> PerfModel:
        """The performance model of this engine's replica."""
        return PerfModel(
            self.model,
            self.gpu,
            self.tensor_parallel,
            self.power_limit_w,
            self.calibration,
            self.gpu_memory_utilization,
            pipeline_parallel=self.pipeline_parallel,
            expert_parallel=self.expert_parallel,
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise EngineConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for --help and documentation)."""
    p = _Parser(
        prog="python -m simulator.engine",
        description="A simulated vLLM engine (OpenAI-compatible HTTP API, vLLM metrics) or LoRA trainer.",
    )
    p.add_argument("--mode", choices=("serve", "trainer"), default="serve")
    p.add_argument("--model", required=True, help="catalogue name or Hugging Face id")
    p.add_argument("--params-b", type=float, help="size in billions, for models not in the catalogue")
    p.add_argument("--architecture", choices=("dense", "moe"), default="dense")
    p.add_argument("--experts", type=int, default=0, help="routed experts (MoE)")
    p.add_argument("--experts-per-token", type=int, default=2, help="experts each token uses (MoE)")
    p.add_argument("--active-params-b", type=float, help="parameters used per token, billions (MoE)")
    p.add_argument(
        "--gpu",
        required=True,
        help=f"GPU product label or short name, e.g. NVIDIA-H100-80GB-HBM3; 'auto' reads ${GPU_PRODUCT_ENV}",
    )
    p.add_argument("--tensor-parallel", type=int, default=1)
    p.add_argument("--pipeline-parallel", type=int, default=1)
    p.add_argument("--expert-parallel", type=int, default=1)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-scale", type=float, default=1.0, help="virtual seconds per wall-clock second")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--max-model-len", type=int, help="default: the model's context, capped by the KV cache")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--served-model-name", nargs="+", help="names clients use (default: --model)")
    p.add_argument("--role", choices=("both", "prefill", "decode"), default="both")
    p.add_argument(
        "--shutdown-timeout",
        type=int,
        default=0,
        help="seconds to finish in-flight requests after SIGTERM (vLLM's flag; 0 aborts them at once)",
    )
    p.add_argument(
        "--metric-names",
        choices=("vllm", "sglang", "none"),
        default="vllm",
        help="export /metrics under vLLM's names or under SGLang's (as `sglang.launch_server --enable-metrics`); "
        "none: /metrics answers 404, as SGLang's without --enable-metrics",
    )
    p.add_argument(
        "--fail-after",
        type=float,
        help="simulator fault: the engine core dies this many (virtual) seconds after start, as vLLM's does on "
        "EngineDeadError (/health 503, requests 500)",
    )
    p.add_argument("--power-limit", type=float, help="initial per-GPU power limit, watts (default TDP)")
    p.add_argument(
        "--expert-load-gbps", type=float, default=25.0, help="rank-to-rank weight bandwidth in an elastic resize"
    )
    p.add_argument("--expert-load-skew", type=float, default=1.0, help="Zipf exponent of expert popularity")
    p.add_argument("--enable-eplb", action="store_true", help="vLLM's expert-parallel load balancer (MoE)")
    p.add_argument("--enable-elastic-ep", action="store_true", help="vLLM's elastic EP (needs --enable-eplb)")
    p.add_argument("--elastic-ep-backend", help="SGLang's switch for elastic EP (any value enables it)")
    p.add_argument("--elastic-ep-max-dp-size", type=int, help="largest width a resize may reach")
    p.add_argument("--enable-return-routed-experts", action="store_true", help="responses carry routed_experts (MoE)")
    p.add_argument("--total-steps", type=int, help="trainer: steps in the run")
    p.add_argument("--step-seconds", type=float, default=1.0, help="trainer: seconds per step")
    p.add_argument("--resume-from", help="trainer: a checkpoint (folder or marker) to resume from instead of `latest`")
    p.add_argument("--checkpoint-dir", help="trainer: checkpoints and the `latest` pointer; resumes from `latest`")
    p.add_argument("--checkpoint-interval-steps", type=int, default=0, help="trainer: checkpoint every N steps")
    p.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters (vLLM's flag)")
    p.add_argument("--lora-modules", nargs="+", default=[], help="name=path adapters loaded at start (vLLM's flag)")
    p.add_argument("--max-lora-rank", type=int, default=16, help="largest adapter rank accepted (vLLM's flag)")
    p.add_argument("--models-root", help="the local folder that stands for the pod's /models mount (the fleet's)")
    p.add_argument("--rank", type=int, default=0, help="trainer: the worker's rank; only rank 0 writes checkpoints")
    return p


def _resolve_model(ns: argparse.Namespace) -> ModelSpec:
    if ns.params_b is None and lookup_model(ns.model) is None:
        raise EngineConfigError(
            f"--model: unknown model {ns.model!r}; pass --params-b (and --architecture moe --experts N for "
            f"a mixture of experts) to simulate it, or use one of: {', '.join(known_model_names())}"
        )
    try:
        # The operator's validation and capacity seed resolve the model the same way (catalogue.models).
        return resolve_model(
            ns.model,
            ns.params_b,
            ns.architecture,
            ns.experts or 0,
            ns.active_params_b,
            experts_per_token=ns.experts_per_token,
        )
    except ValueError as exc:
        flag = "--experts" if "expert" in str(exc) else "--params-b"
        raise EngineConfigError(f"{flag}: {exc}") from exc


def runtime_lora_updating(env: Mapping[str, str]) -> bool:
    """vLLM's reading of VLLM_ALLOW_RUNTIME_LORA_UPDATING ("1" or "true", any case)."""
    return env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() in ("1", "true")


def _lora_modules(values: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise EngineConfigError(f"--lora-modules: expected name=path, got {value!r}")
        out.append((name, path))
    return tuple(out)


def _read_checkpoint(path: str) -> int:
    try:
        given = Path(path)
        marker = json.loads((given / "state.json" if given.is_dir() else given).read_text())
        step = int(marker["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineConfigError(f"--resume-from: cannot read a checkpoint marker from {path!r}: {exc}") from exc
    if step < 0:
        raise EngineConfigError(f"--resume-from: checkpoint step must not be negative, got {step}")
    return step


def _positive(flag: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise EngineConfigError(f"{flag}: must be {'non-negative' if allow_zero else 'positive'}, got {value:g}")


def parse_args(argv: list[str]) -> EngineConfig:
    """Parse the engine command line into an EngineConfig; raises EngineConfigError naming the bad flag."""
    ns = build_parser().parse_args(argv)
    gpu_name = ns.gpu
    if gpu_name == "auto":
        gpu_name = os.environ.get(GPU_PRODUCT_ENV, "")
        if not gpu_name:
            raise EngineConfigError(f"--gpu: 'auto' needs ${GPU_PRODUCT_ENV} set to the node's GPU product")
    gpu = lookup_gpu(gpu_name)
    if gpu is None:
        raise EngineConfigError(f"--gpu: unknown GPU {gpu_name!r}; known GPUs: {', '.join(known_gpu_names())}")
    model = _resolve_model(ns)
    for flag in ("tensor_parallel", "pipeline_parallel", "expert_parallel", "max_num_seqs", "max_num_batched_tokens"):
        _positive("--" + flag.replace("_", "-"), getattr(ns, flag))
    _positive("--time-scale", ns.time_scale)
    _positive("--expert-load-gbps", ns.expert_load_gbps)
    _positive("--expert-load-skew", ns.expert_load_skew, allow_zero=True)
    elastic = ns.enable_elastic_ep or ns.elastic_ep_backend is not None
    if elastic:
        if model.architecture != "moe":
            raise EngineConfigError(f"--enable-elastic-ep: {model.name} is a dense model; elastic EP needs MoE")
        if ns.enable_elastic_ep and not ns.enable_eplb:
            raise EngineConfigError("--enable-elastic-ep: elastic EP needs --enable-eplb (vLLM's rule)")
        if model.experts % ns.expert_parallel:
            raise EngineConfigError(
                f"--expert-parallel: {model.experts} experts cannot be split evenly over {ns.expert_parallel} ranks"
            )
    if ns.elastic_ep_max_dp_size is not None and ns.elastic_ep_max_dp_size < ns.expert_parallel:
        raise EngineConfigError(
            f"--elastic-ep-max-dp-size: must be at least the starting width {ns.expert_parallel}, "
            f"got {ns.elastic_ep_max_dp_size}"
        )
    _positive("--shutdown-timeout", ns.shutdown_timeout, allow_zero=True)
    if ns.fail_after is not None:
        _positive("--fail-after", ns.fail_after, allow_zero=True)
    if not 0 < ns.gpu_memory_utilization <= 1:
        raise EngineConfigError(f"--gpu-memory-utilization: must be in (0, 1], got {ns.gpu_memory_utilization:g}")
    if not 0 <= ns.port <= 65535:
        raise EngineConfigError(f"--port: must be in 0..65535, got {ns.port}")
    if ns.expert_parallel > 1 and model.architecture != "moe":
        raise EngineConfigError(f"--expert-parallel: {model.name} is a dense model; expert parallelism needs MoE")
    if ns.power_limit is not None:
        try:
            validate_power_limit(gpu, ns.power_limit)
        except PowerLimitError as exc:
            raise EngineConfigError(f"--power-limit: {exc}") from exc
    cfg = EngineConfig(
        model=model,
        model_arg=ns.model,
        gpu=gpu,
        served_model_names=tuple(ns.served_model_name or [ns.model]),
        enable_lora=ns.enable_lora or bool(ns.lora_modules),
        lora_modules=_lora_modules(ns.lora_modules),
        max_lora_rank=ns.max_lora_rank,
        models_root=ns.models_root,
        runtime_lora_updating=runtime_lora_updating(os.environ),
        mode=ns.mode,
        tensor_parallel=ns.tensor_parallel,
        pipeline_parallel=ns.pipeline_parallel,
        expert_parallel=ns.expert_parallel,
        host=ns.host,
        port=ns.port,
        seed=ns.seed,
        time_scale=ns.time_scale,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        role=ns.role,
        power_limit_w=ns.power_limit,
        expert_load_gbps=ns.expert_load_gbps,
        expert_load_skew=ns.expert_load_skew,
        enable_eplb=ns.enable_eplb,
        enable_elastic_ep=elastic,
        elastic_ep_max_dp_size=ns.elastic_ep_max_dp_size,
        drain_before_scale=os.environ.get(DRAIN_ENV, "0") not in ("", "0"),
        return_routed_experts=ns.enable_return_routed_experts,
        step_seconds=ns.step_seconds,
        resume_from=ns.resume_from,
        checkpoint_dir=ns.checkpoint_dir,
        shutdown_timeout_s=ns.shutdown_timeout,
        metric_names=ns.metric_names,
        fail_after_s=ns.fail_after,
    )
    if ns.mode == "trainer":
        # A trainer's pace is --step-seconds; its workers may shard the model, so serving memory rules do not apply.
        return _trainer_config(cfg, ns)
    perf = cfg.perf_model()
    problem = perf.fit_problem()
    if problem is not None:
        raise EngineConfigError(f"--gpu/--tensor-parallel: {problem}")
    capacity = perf.kv_capacity_tokens
    if ns.max_model_len is None:
        max_model_len = min(model.max_context, capacity)
    else:
        _positive("--max-model-len", ns.max_model_len)
        if ns.max_model_len > capacity:
            raise EngineConfigError(
                f"--max-model-len: the model's max seq len ({ns.max_model_len}) is larger than the maximum "
                f"number of tokens that can be stored in KV cache ({capacity}); raise --gpu-memory-utilization "
                "or --tensor-parallel, or lower --max-model-len"
            )
        max_model_len = ns.max_model_len
    return replace(cfg, max_model_len=max_model_len)


def _trainer_config(cfg: EngineConfig, ns: argparse.Namespace) -> EngineConfig:
    if ns.total_steps is None:
        raise EngineConfigError("--total-steps: required with --mode trainer")
    _positive("--total-steps", ns.total_steps)
    _positive("--step-seconds", ns.step_seconds)
    if ns.checkpoint_interval_steps < 0:
        raise EngineConfigError("--checkpoint-interval-steps: must not be negative")
    source = ns.resume_from
    if source is None and ns.checkpoint_dir is not None:
        # The contract (docs/finetuning.md): resume from the checkpoint `latest` names, if there is one.
        pointer = Path(ns.checkpoint_dir) / "latest"
        if pointer.is_file():
            source = str(Path(ns.checkpoint_dir) / pointer.read_text().strip())
    start = 0 if source is None else _read_checkpoint(source)
    if start > ns.total_steps:
        raise EngineConfigError(f"--resume-from: checkpoint step {start} is beyond --total-steps {ns.total_steps}")
    return replace(
        cfg,
        total_steps=ns.total_steps,
        start_step=start,
        resumed=source is not None,
        checkpoint_interval_steps=ns.checkpoint_interval_steps,
        rank=ns.rank,
    )
