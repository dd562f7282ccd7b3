"""How long an LLM engine iteration takes on given GPUs: a calibrated roofline model.

Pure and deterministic: no I/O, no clock. Per GPU, one continuous-batching iteration costs
  linear layers:  max(weight bytes / (MBU x HBM bandwidth), 2 x active params x tokens / (MFU x peak FLOPs))
  attention:      KV bytes read / (MBU x bandwidth) + 4 x layers x hidden x attended pairs / (MFU x peak)
times (1 + tp_comm_overhead x log2(parallel width)) for all-reduces, plus a fixed per-step overhead.
Prefill is therefore compute-bound and decode memory-bound without special cases. See docs/simulator.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from catalogue.gpus import GPUProfile
from catalogue.models import ModelSpec
from catalogue.power import power_draw_w, speed_factor, validate_power_limit


class ModelDoesNotFitError(ValueError):
    """The model's weights (plus reserves) exceed the GPUs' memory."""


@dataclass(frozen=True)
class Calibration:
    """Efficiency constants fitted to published measurements (docs/simulator.md lists the anchors)."""

    prefill_mfu: float = 0.70  # share of peak BF16 FLOP/s that GEMMs and attention reach
    decode_mbu: float = 0.78  # share of HBM bandwidth reached when streaming weights and KV cache
    tp_comm_overhead: float = 0.07  # extra time per doubling of the parallel width (all-reduces)
    step_overhead_s: float = 0.0003  # scheduler, sampling and launch cost of one iteration
    activation_reserve_gb: float = 2.0  # per-GPU memory kept for activations and CUDA graphs
    engine_init_s: float = 20.0  # start-up after weights load: profiling, graph capture
    pp_stage_latency_s: float = 0.0002  # activation hand-off between pipeline stages, per stage
    kv_transfer_gbps: float = 25.0  # prefill-to-decode KV transfer bandwidth (disaggregated roles)
    memory_bound_activity: float = 0.6  # power drawn by bandwidth-bound work, as a share of idle->TDP
    memory_clock_sensitivity: float = 0.5  # how much of an SM-clock slowdown bandwidth-bound work feels

    def __post_init__(self) -> None:
        for name in ("prefill_mfu", "decode_mbu", "memory_bound_activity", "memory_clock_sensitivity"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"Calibration.{name} must be in (0, 1], got {value}")
        for name in ("tp_comm_overhead", "step_overhead_s", "activation_reserve_gb", "engine_init_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Calibration.{name} must not be negative")
        if self.kv_transfer_gbps <= 0:
            raise ValueError("Calibration.kv_transfer_gbps must be positive")


DEFAULT_CALIBRATION = Calibration()


@dataclass(frozen=True)
class StepProfile:
    """One iteration's duration and how it splits into FLOP-bound and bandwidth-bound time."""

    duration_s: float
    compute_s: float
    memory_s: float
    activity: float  # average power activity over the step, 0 (idle) .. 1 (compute-bound)


_IDLE = StepProfile(0.0, 0.0, 0.0, 0.0)


class PerfModel:
    """Timing, memory and power of one engine replica: a model on tensor x pipeline x expert parallel GPUs."""

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUProfile,
        tensor_parallel: int = 1,
        power_limit_w: float | None = None,
        calibration: Calibration = DEFAULT_CALIBRATION,
        gpu_memory_utilization: float = 0.9,
        *,
        pipeline_parallel: int = 1,
        expert_parallel: int = 1,
    ) -> None:
        for flag, value in (
            ("tensor_parallel", tensor_parallel),
            ("pipeline_parallel", pipeline_parallel),
            ("expert_parallel", expert_parallel),
        ):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if expert_parallel > 1 and model.architecture != "moe":
            raise ValueError(f"expert_parallel > 1 needs a MoE model; {model.name} is dense")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        self.model = model
        self.gpu = gpu
        self.tensor_parallel = tensor_parallel
        self.pipeline_parallel = pipeline_parallel
        self.expert_parallel = expert_parallel
        self.calibration = calibration
        self.gpu_memory_utilization = gpu_memory_utilization
        self.power_limit_w = None if power_limit_w is None else validate_power_limit(gpu, power_limit_w)
        # Tensor and expert parallelism split each layer's work; pipeline stages run one after another.
        self._width = tensor_parallel * expert_parallel
        self.compute_speed = speed_factor(gpu, self.power_limit_w, 1.0)
        memory_throttle = 1.0 - speed_factor(gpu, self.power_limit_w, calibration.memory_bound_activity)
        self.memory_speed = 1.0 - calibration.memory_clock_sensitivity * memory_throttle

    @property
    def num_gpus(self) -> int:
        """GPUs in the replica."""
        return self.tensor_parallel * self.pipeline_parallel * self.expert_parallel

    @property
    def weight_bytes_per_gpu(self) -> float:
        """Weight bytes resident on each GPU: shared layers split by TP x PP, experts also by EP."""
        m = self.model
        shards = self.tensor_parallel * self.pipeline_parallel
        shared = m.shared_params_b * 1e9 * m.dtype_bytes / shards
        experts = m.experts * m.expert_params_b * 1e9 * m.dtype_bytes / (shards * self.expert_parallel)
        return shared + experts

    @property
    def kv_bytes_per_token(self) -> float:
        """KV bytes one token occupies across the replica; KV heads are replicated when TP exceeds them."""
        replication = max(1.0, self.tensor_parallel / self.model.kv_heads)
        return self.model.kv_bytes_per_token * replication

    @property
    def free_bytes_per_gpu(self) -> float:
        """Memory left for KV cache on each GPU (negative when the weights do not fit)."""
        budget = self.gpu_memory_utilization * self.gpu.memory_gb * 1e9
        return budget - self.weight_bytes_per_gpu - self.calibration.activation_reserve_gb * 1e9

    @property
    def fits(self) -> bool:
        """Whether the weights fit and leave room for at least one 16-token KV block."""
        return self.free_bytes_per_gpu * self.num_gpus >= 16 * self.kv_bytes_per_token

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache the replica holds; 0 when the model does not fit (see `fits`)."""
        if not self.fits:
            return 0
        return int(self.free_bytes_per_gpu * self.num_gpus // self.kv_bytes_per_token)

    def fit_problem(self) -> str | None:
        """Why the model does not fit, in words a user can act on, or None when it fits."""
        if self.fits:
            return None
        need = self.weight_bytes_per_gpu / 1e9 + self.calibration.activation_reserve_gb
        have = self.gpu_memory_utilization * self.gpu.memory_gb
        return (
            f"{self.model.name} needs {need:.1f} GB per GPU (weights {self.model.weight_bytes / 1e9:.1f} GB "
            f"over {self.tensor_parallel * self.pipeline_parallel} GPUs plus activation reserve) but "
            f"{self.gpu.product} offers {have:.1f} GB at gpu_memory_utilization "
            f"{self.gpu_memory_utilization:g}; use more GPUs (tensor/pipeline parallel) or a larger GPU"
        )

    def require_fit(self) -> None:
        """Raise ModelDoesNotFitError with the reason when the model does not fit."""
        problem = self.fit_problem()
        if problem is not None:
            raise ModelDoesNotFitError(problem)

    def _weight_bytes_read(self, tokens: int) -> float:
        """Weight bytes one iteration streams from HBM across the replica; MoE reads only routed experts."""
        m = self.model
        if m.architecture != "moe" or m.experts == 0:
            return m.weight_bytes
        # Each token picks k of E experts; the chance an expert is untouched by all tokens is (1 - k/E)^n.
        touched = 1.0 - (1.0 - m.experts_per_token / m.experts) ** tokens
        shared = m.shared_params_b * 1e9 * m.dtype_bytes
        return shared + m.experts * m.expert_params_b * 1e9 * m.dtype_bytes * touched

    def step_profile(
        self,
        prefill_tokens: int,
        decode_seqs: int,
        kv_tokens: int,
        *,
        prefill_attention_pairs: float | None = None,
    ) -> StepProfile:
        """Cost of one iteration: prefill_tokens prompt tokens plus decode_seqs sequences attending to
        kv_tokens cached tokens in total; prefill_attention_pairs (query, key) pairs default to one causal
        prompt (prefill_tokens^2 / 2)."""
        if prefill_tokens < 0 or decode_seqs < 0 or kv_tokens < 0:
            raise ValueError("token and sequence counts must not be negative")
        tokens = prefill_tokens + decode_seqs
        if tokens == 0:
            return _IDLE
        m, gpu, cal = self.model, self.gpu, self.calibration
        pairs = prefill_tokens * prefill_tokens / 2 if prefill_attention_pairs is None else prefill_attention_pairs
        flops_per_s = gpu.peak_bf16_tflops * 1e12 * cal.prefill_mfu * self.compute_speed * self._width
        bytes_per_s = gpu.hbm_gbps * 1e9 * cal.decode_mbu * self.memory_speed * self._width
        weights_mem = self._weight_bytes_read(tokens) / bytes_per_s
        weights_flop = 2.0 * m.active_params_b * 1e9 * tokens / flops_per_s
        attention_mem = self.kv_bytes_per_token * kv_tokens / bytes_per_s
        attention_flop = 4.0 * m.layers * m.hidden * (pairs + kv_tokens) / flops_per_s
        compute = attention_flop + (weights_flop if weights_flop >= weights_mem else 0.0)
        memory = attention_mem + (weights_mem if weights_mem > weights_flop else 0.0)
        comm = 1.0 + cal.tp_comm_overhead * math.log2(self._width)
        duration = (
            (compute + memory) * comm + cal.step_overhead_s + (self.pipeline_parallel - 1) * cal.pp_stage_latency_s
        )
        activity = (compute * comm + memory * comm * cal.memory_bound_activity) / duration
        return StepProfile(duration, compute * comm, memory * comm, min(1.0, activity))

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        """Duration of one continuous-batching iteration mixing a prefill chunk and decodes."""
        return self.step_profile(prefill_tokens, decode_seqs, kv_tokens).duration_s

    def prefill_seconds(self, tokens: int) -> float:
        """Duration of prefilling one prompt of `tokens` tokens in a single iteration."""
        return self.step_profile(tokens, 0, 0).duration_s

    def decode_step_seconds(self, batch_size: int, kv_tokens: int) -> float:
        """Duration of one decode iteration of batch_size sequences attending to kv_tokens cached tokens."""
        return self.step_profile(0, batch_size, kv_tokens).duration_s

    def power_w(self, utilization: float) -> float:
        """Draw of each GPU at the given utilisation (0..1), never above the power limit."""
        return power_draw_w(self.gpu, utilization, self.power_limit_w)

    def with_power_limit(self, watts: float | None) -> PerfModel:
        """The same replica under another per-GPU power limit (None = default, TDP)."""
        return PerfModel(
            self.model,
            self.gpu,
            self.tensor_parallel,
            watts,
            self.calibration,
            self.gpu_memory_utilization,
            pipeline_parallel=self.pipeline_parallel,
            expert_parallel=self.expert_parallel,
        )

    def cold_start_seconds(self, image_pull_s: float = 60.0, load_gbps: float = 2.0) -> float:
        """Time from pod start to serving: image pull, reading all weights at load_gbps GB/s, engine init."""
        if image_pull_s < 0 or load_gbps <= 0:
            raise ValueError("image_pull_s must be >= 0 and load_gbps > 0")
        return image_pull_s + self.model.weight_bytes / (load_gbps * 1e9) + self.calibration.engine_init_s

    def kv_transfer_seconds(self, tokens: int) -> float:
        """Time to receive `tokens` tokens of KV cache from a prefill replica."""
        return tokens * self.kv_bytes_per_token / (self.calibration.kv_transfer_gbps * 1e9)
