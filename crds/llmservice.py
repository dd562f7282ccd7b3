"""LLMService: a model served by N replicas, each a gang of GPU pods that start, serve and stop together."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crds.base import ApiModel, Condition, ObjectMeta, conditions_field


class ModelSpec(ApiModel):
    """The model to serve."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.architecture == 'moe' || (!has(self.experts) && !has(self.activeParametersB)"
                    " && !has(self.expertsPerToken))",
                    "message": "experts, expertsPerToken and activeParametersB are only allowed when "
                    "architecture is moe",
                    "fieldPath": ".architecture",
                },
                {
                    "rule": "self.architecture != 'moe' || has(self.experts)",
                    "message": "experts is required when architecture is moe",
                    "fieldPath": ".experts",
                },
                {
                    "rule": "!has(self.activeParametersB) || self.activeParametersB <= self.parametersB",
                    "message": "activeParametersB must not exceed parametersB",
                    "fieldPath": ".activeParametersB",
                },
                {
                    "rule": "!has(self.expertsPerToken) || self.expertsPerToken <= self.experts",
                    "message": "expertsPerToken must not exceed experts",
                    "fieldPath": ".expertsPerToken",
                },
            ]
        }
    }

    name: str = Field(
        min_length=1, max_length=253, description="Model name served to clients (the OpenAI `model` field)."
    )
    source: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(hf|s3|gs|pvc|file|oci)://.+",
        description="Where the weights come from: hf://org/name, s3://bucket/path, gs://..., pvc://claim/path, "
        "file:///path or oci://image.",
    )
    parameters_b: float = Field(gt=0, le=10000, description="Total parameters in billions (e.g. 70 for a 70B model).")
    architecture: Literal["dense", "moe"] = Field(
        default="dense", description="dense, or moe for a Mixture-of-Experts model."
    )
    experts: int | None = Field(
        default=None, ge=2, le=1024, description="Number of routed experts per MoE layer (moe only)."
    )
    experts_per_token: int | None = Field(
        default=None, ge=1, le=64, description="Experts activated per token (moe only)."
    )
    active_parameters_b: float | None = Field(
        default=None, gt=0, description="Parameters active per token in billions (moe only)."
    )


class EngineSpec(ApiModel):
    """The inference engine that runs in each pod."""

    type: Literal["vllm", "sglang", "simulated"] = Field(
        default="vllm", description="vllm, sglang, or simulated (Ebbtide's GPU-free engine for tests and demos)."
    )
    image: str | None = Field(
        default=None, max_length=1024, description="Container image; defaults to the engine's upstream image."
    )
    args: list[str] = Field(
        default_factory=list, max_length=64, description="Extra command-line arguments appended to the engine's."
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Port the engine serves HTTP and /metrics on.")
    cpu: str = Field(
        default="4", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request of each engine pod (e.g. 4 or 500m)."
    )
    memory: str = Field(
        default="32Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$",
        description="Memory request of each engine pod (e.g. 32Gi).",
    )


class GPUSpec(ApiModel):
    """GPUs each replica needs and which products may serve it."""

    count: int = Field(
        default=1, ge=1, le=512, description="GPUs per replica; must equal tensor x pipeline x data parallel."
    )
    per_node: int = Field(
        default=8,
        ge=1,
        le=16,
        description="GPUs per pod at most; a replica needing more becomes a leader plus worker pods.",
    )
    types: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Allowed GPU products (nvidia.com/gpu.product values or short names such as H100); "
        "empty means any known product.",
    )


class ParallelismSpec(ApiModel):
    """How a replica splits the model over its GPUs."""

    tensor: int = Field(default=1, ge=1, le=64, description="Tensor-parallel degree.")
    pipeline: int = Field(default=1, ge=1, le=64, description="Pipeline-parallel degree.")
    data: int = Field(default=1, ge=1, le=64, description="Data-parallel ranks inside one replica.")
    expert: int = Field(default=1, ge=1, le=512, description="Expert-parallel degree (moe only).")
    elastic_expert: bool = Field(
        default=False,
        description="MoE: run the engine with elastic expert parallelism (vLLM --enable-elastic-ep with EPLB, "
        "SGLang --elastic-ep-backend), so a running replica can change its expert-parallel width in place.",
    )
    max_expert: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="MoE with elasticExpert: the widest expert-parallel degree a resize may reach (vLLM "
        "--elastic-ep-max-dp-size counts it in data-parallel ranks of parallelism.tensor GPUs); default "
        "parallelism.expert.",
    )


class SLOSpec(ApiModel):
    """Latency objectives the autoscaler plans for."""

    ttft_seconds: float = Field(default=2.0, gt=0, le=600, description="Target time to first token, seconds.")
    inter_token_latency_seconds: float = Field(
        default=0.1, gt=0, le=10, description="Target inter-token latency (time per output token), seconds."
    )
    attainment: float = Field(
        default=0.99, ge=0.5, le=0.9999, description="Share of requests that must meet both targets."
    )


class ScalingSpec(ApiModel):
    """Replica limits and the autoscaling policy."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must be less than or equal to maxReplicas",
                    "fieldPath": ".minReplicas",
                },
                {
                    "rule": "!self.scaleToZero || self.minReplicas == 0",
                    "message": "scaleToZero requires minReplicas: 0",
                    "fieldPath": ".scaleToZero",
                },
            ]
        }
    }

    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas the autoscaler keeps.")
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Most replicas the autoscaler creates.")
    policy: Literal["forecast", "reactive", "none"] = Field(
        default="forecast",
        description="forecast (scale ahead of predicted demand), reactive (target tracking), or none "
        "(leave spec.replicas to kubectl scale, HPA or KEDA).",
    )
    scale_to_zero: bool = Field(default=False, description="Allow zero replicas when no demand is forecast.")
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=86400, description="Scale in only to the highest recommendation of this window."
    )
    forecast_coverage: float | None = Field(
        default=None,
        ge=0.01,
        le=0.9999,
        description="forecast policy: probability that the chosen replicas cover the forecast demand over the "
        "lead time (the decision's critical ratio). Default: slo.attainment. Smooth traffic needs less, since the "
        "engine profile's SLO margin already absorbs arrival noise; see docs/autoscaler.md, Tuning.",
    )
    target_utilization: float | None = Field(
        default=None,
        gt=0,
        le=1.5,
        description="reactive policy: load per replica to hold, as a share of the profiled capacity. Default: 0.7.",
    )
    slo: SLOSpec = Field(default_factory=SLOSpec, description="Latency objectives.")


class RolesSpec(ApiModel):
    """Prefill/decode disaggregation: each replica runs separate prefill and decode pods."""

    prefill: int = Field(default=1, ge=1, le=64, description="Prefill pods per replica.")
    decode: int = Field(default=1, ge=1, le=64, description="Decode pods per replica.")


class AdapterSpec(ApiModel):
    """A LoRA adapter loaded next to the base model."""

    name: str = Field(min_length=1, max_length=253, description="Adapter name clients request as `model`.")
    source: str = Field(
        min_length=1, max_length=2048, pattern=r"^(hf|s3|gs|pvc|file)://.+", description="Adapter weights URI."
    )
    from_job: str | None = Field(
        default=None, max_length=253, description="The FineTuneJob that produced it (set when a job publishes it)."
    )


class AdapterStatus(ApiModel):
    """An adapter of spec.adapters as the replicas serve it."""

    name: str = Field(description="Adapter name.")
    source: str = Field(description="Adapter weights URI.")
    from_job: str | None = Field(default=None, description="The FineTuneJob that produced it, if one did.")
    loaded_replicas: int = Field(default=0, description="Ready replicas that list it in /v1/models.")


class LLMServiceSpec(ApiModel):
    """Desired state of an LLMService."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.gpu.count == self.parallelism.tensor * self.parallelism.pipeline"
                    " * self.parallelism.data",
                    "message": "gpu.count must equal parallelism.tensor x parallelism.pipeline x parallelism.data",
                    "fieldPath": ".gpu.count",
                },
                {
                    "rule": "self.parallelism.expert == 1 || self.model.architecture == 'moe'",
                    "message": "parallelism.expert > 1 needs model.architecture: moe",
                    "fieldPath": ".parallelism.expert",
                },
                {
                    "rule": "!self.parallelism.elasticExpert || self.model.architecture == 'moe'",
                    "message": "parallelism.elasticExpert needs model.architecture: moe",
                    "fieldPath": ".parallelism.elasticExpert",
                },
                {
                    "rule": "!has(self.parallelism.maxExpert) || self.parallelism.maxExpert >= self.parallelism.expert",
                    "message": "parallelism.maxExpert must be at least parallelism.expert",
                    "fieldPath": ".parallelism.maxExpert",
                },
                {
                    "rule": "self.model.architecture != 'moe' || self.parallelism.expert <= self.model.experts",
                    "message": "parallelism.expert must not exceed model.experts",
                    "fieldPath": ".parallelism.expert",
                },
                {
                    "rule": "self.gpu.count <= self.gpu.perNode || self.gpu.count % self.gpu.perNode == 0",
                    "message": "a replica spanning nodes needs gpu.count to be a multiple of gpu.perNode",
                    "fieldPath": ".gpu.perNode",
                },
                {
                    "rule": "!has(self.roles) || self.gpu.count <= self.gpu.perNode",
                    "message": "prefill/decode roles need each role pod on one node (gpu.count <= gpu.perNode)",
                    "fieldPath": ".roles",
                },
            ]
        }
    }

    model: ModelSpec = Field(description="The model to serve.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="The inference engine.")
    gpu: GPUSpec = Field(default_factory=GPUSpec, description="GPUs per replica and allowed GPU products.")
    parallelism: ParallelismSpec = Field(
        default_factory=ParallelismSpec, description="Tensor, pipeline, data and expert parallelism."
    )
    replicas: int = Field(
        default=1, ge=0, le=1000, description="Desired replicas (the scale subresource; set by the autoscaler)."
    )
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Autoscaling limits and policy.")
    roles: RolesSpec | None = Field(
        default=None, description="Optional prefill/decode split; each role pod gets gpu.count GPUs."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods (placement and preemption)."
    )
    adapters: list[AdapterSpec] = Field(default_factory=list, max_length=64, description="LoRA adapters to load.")
    drain_grace_period_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="How long a draining engine may finish in-flight requests after SIGTERM (--shutdown-timeout).",
    )


class ForecastStatus(ApiModel):
    """The autoscaler's latest forecast, for explanation."""

    horizon_seconds: float | None = Field(default=None, description="Lead time the forecast covers.")
    p50: float | None = Field(default=None, description="Median forecast request rate (req/s).")
    p90: float | None = Field(default=None, description="90th percentile forecast request rate (req/s).")
    p99: float | None = Field(default=None, description="99th percentile forecast request rate (req/s).")
    capacity_rps: float | None = Field(default=None, description="Requests/s one replica sustains within SLO.")
    risk: float | None = Field(default=None, description="Predicted SLO-miss probability at desiredReplicas.")
    reason: str | None = Field(default=None, description="Why the autoscaler chose desiredReplicas.")


class LLMServiceStatus(ApiModel):
    """Observed state of an LLMService."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    replicas: int = Field(default=0, description="Replica gangs that exist (scale subresource).")
    ready_replicas: int = Field(default=0, description="Replica gangs whose pods are all Ready.")
    updated_replicas: int | None = Field(
        default=None, description="Replica gangs built from the current pod template; the others are being replaced."
    )
    ready: str | None = Field(default=None, description="ready/desired, for kubectl get.")
    desired_replicas: int | None = Field(default=None, description="What the autoscaler last asked for.")
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).")
    gpus: int | None = Field(default=None, description="GPUs requested by all replicas.")
    phase: str | None = Field(default=None, description="Pending, Progressing, Ready, Degraded or Failed.")
    observed_generation: int | None = Field(default=None, description="The generation this status reflects.")
    forecast: ForecastStatus | None = Field(default=None, description="The autoscaler's explanation.")
    expert_layout: dict[str, list[int]] | None = Field(
        default=None,
        description="MoE with elasticExpert: the logical expert in each slot of each expert-parallel rank (by rank "
        "index), as planned for the latest width change.",
    )
    power_cap_watts: float | None = Field(
        default=None, description="Lowest per-GPU power cap in force on the service's GPUs; absent when uncapped."
    )
    adapters: list[AdapterStatus] | None = Field(default=None, description="LoRA adapters and where they are loaded.")
    conditions: list[Condition] = conditions_field("Ready, Progressing, Degraded, ...")


class LLMService(ApiModel):
    """A model served by N replicas; each replica is a gang of GPU pods."""

    api_version: Literal["ebbtide.dev/v1alpha1"] = Field(default="ebbtide.dev/v1alpha1", alias="apiVersion")
    kind: Literal["LLMService"] = "LLMService"
    metadata: ObjectMeta
    spec: LLMServiceSpec
    status: LLMServiceStatus = Field(default_factory=LLMServiceStatus)
