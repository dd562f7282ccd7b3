"""FineTuneJob: a parameter-efficient (LoRA) fine-tuning run on a gang of GPU worker pods."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crds.base import RESERVED, ApiModel, Condition, ObjectMeta, conditions_field

FineTunePhase = Literal["Pending", "Running", "Checkpointing", "Preempted", "Succeeded", "Failed"]


class BaseModelSpec(ApiModel):
    """The model being fine-tuned."""

    name: str = Field(min_length=1, max_length=253, description="Base model name.")
    source: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(hf|s3|gs|pvc|file|oci)://.+",
        description="Where the base weights come from (hf://, s3://, gs://, pvc://, file://, oci://).",
    )
    parameters_b: float = Field(gt=0, le=10000, description="Total parameters in billions.")


class DatasetSpec(ApiModel):
    """Training data."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(hf|s3|gs|pvc|file)://.+",
        description="Dataset location (hf://, s3://, gs://, pvc:// or file://).",
    )


class HyperParameters(ApiModel):
    """LoRA hyper-parameters."""

    rank: int = Field(default=16, ge=1, le=1024, description="LoRA rank r.")
    alpha: int = Field(default=32, ge=1, le=4096, description="LoRA scaling alpha.")
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Optimizer learning rate.")
    batch_size: int = Field(default=8, ge=1, le=65536, description="Global batch size (sequences per step).")
    total_steps: int = Field(default=1000, ge=1, le=10_000_000, description="Optimizer steps to run.")


class GPURequest(ApiModel):
    """GPUs per worker pod and which products may run it."""

    count: int = Field(default=1, ge=1, le=16, description="GPUs per worker pod.")
    types: list[str] = Field(
        default_factory=list, max_length=16, description="Allowed GPU products (labels or short names)."
    )


class WorkersSpec(ApiModel):
    """Elastic worker count."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max", "message": "min must be <= max", "fieldPath": ".min"}
            ]
        }
    }

    min: int = Field(default=1, ge=1, le=1024, description="Fewest workers the job runs with." + RESERVED)
    max: int = Field(default=1, ge=1, le=1024, description="Most workers the job runs with.")


class CheckpointSpec(ApiModel):
    """Where and how often the trainer checkpoints. The operator never deletes checkpoints."""

    interval_seconds: int = Field(default=600, ge=10, le=86400, description="Seconds between checkpoints.")
    interval_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Optimizer steps between checkpoints (besides the seconds)."
    )
    grace_period_seconds: int = Field(
        default=120,
        ge=1,
        le=3600,
        description="The workers' terminationGracePeriodSeconds: SIGTERM means checkpoint now, then exit, within it.",
    )
    storage: str = Field(
        default="pvc://ebbtide-checkpoints",
        min_length=1,
        max_length=2048,
        pattern=r"^(s3|gs|pvc|file)://.+",
        description="Checkpoint location (s3://, gs://, pvc://claim/path or file://).",
    )


class TrainerSpec(ApiModel):
    """The training program in each worker."""

    type: Literal["peft", "simulated"] = Field(
        default="peft", description="peft (Hugging Face PEFT trainer) or simulated (GPU-free trainer)."
    )
    image: str | None = Field(default=None, max_length=1024, description="Container image override.")
    args: list[str] = Field(default_factory=list, max_length=64, description="Extra trainer arguments.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the trainer's control endpoint.")
    step_seconds: float = Field(
        default=1.0, gt=0, le=3600, description="Simulated trainer only: seconds per optimizer step."
    )


class OutputSpec(ApiModel):
    """The adapter the job produces."""

    adapter_name: str = Field(min_length=1, max_length=253, description="Name of the produced adapter.")
    publish_to: str | None = Field(
        default=None, max_length=253, description="LLMService (same namespace) that should load the adapter." + RESERVED
    )


class FineTuneJobSpec(ApiModel):
    """Desired state of a FineTuneJob."""

    base_model: BaseModelSpec = Field(description="The model being fine-tuned.")
    dataset: DatasetSpec = Field(description="Training data.")
    method: Literal["lora", "qlora"] = Field(default="lora", description="lora or qlora.")
    hyperparameters: HyperParameters = Field(default_factory=HyperParameters, description="Hyper-parameters.")
    gpu: GPURequest = Field(default_factory=GPURequest, description="GPUs per worker.")
    workers: WorkersSpec = Field(default_factory=WorkersSpec, description="Worker count (min/max).")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing.")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="Training program.")
    priority_class_name: str | None = Field(default=None, max_length=253, description="PriorityClass of pods.")
    preemptible: bool = Field(
        default=True, description="May be preempted by higher priority work (after a checkpoint)."
    )
    backoff_limit: int = Field(default=3, ge=0, le=100, description="Worker failures tolerated before Failed.")
    output: OutputSpec | None = Field(default=None, description="Output adapter.")


class CheckpointStatus(ApiModel):
    """A checkpoint the trainer confirmed."""

    path: str = Field(description="Checkpoint location.")
    step: int = Field(description="Optimizer step the checkpoint holds.")
    time: str | None = Field(default=None, description="When it was confirmed (RFC 3339).")


class CheckpointRequestStatus(ApiModel):
    """A checkpoint asked for by SIGTERM (preemption), until the trainer's checkpoint step is read back."""

    step: int = Field(description="Step the trainer reported when it was sent SIGTERM.")
    time: str = Field(description="When SIGTERM was sent (RFC 3339).")


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    phase: FineTunePhase | None = Field(default=None, description="Lifecycle phase.")
    step: int | None = Field(default=None, description="Last reported optimizer step.")
    total_steps: int | None = Field(default=None, description="Steps to run.")
    progress: str | None = Field(default=None, description="step/total, for kubectl get.")
    workers: int | None = Field(default=None, description="Worker pods running.")
    attempt: int = Field(default=0, description="Incremented each time the job's pods are (re)created.")
    last_checkpoint: CheckpointStatus | None = Field(default=None, description="Latest confirmed checkpoint.")
    checkpoint_request: CheckpointRequestStatus | None = Field(
        default=None, description="The SIGTERM checkpoint awaited, until its step is read back."
    )
    resumed_from_step: int | None = Field(
        default=None, description="Step the current attempt resumed from, as its trainer reports it."
    )
    adapter: str | None = Field(default=None, description="Where the finished adapter is (PEFT format).")
    preemptions: int = Field(default=0, description="Times the job was preempted.")
    failures: int = Field(default=0, description="Worker failures seen.")
    start_time: str | None = Field(default=None, description="When the first worker started.")
    completion_time: str | None = Field(default=None, description="When the job finished.")
    observed_generation: int | None = Field(default=None, description="The generation this status reflects.")
    conditions: list[Condition] = conditions_field("Ready, Preempted, Degraded, ...")


class FineTuneJob(ApiModel):
    """A LoRA fine-tuning run."""

    api_version: Literal["ebbtide.dev/v1alpha1"] = Field(default="ebbtide.dev/v1alpha1", alias="apiVersion")
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)
