"""The vocabulary of conditions and Events: every condition type and reason Ebbtide writes, in one place.

Controllers, the autoscaler and the packer's shell name reasons only through these enums, never as free text,
and docs/troubleshooting.md explains each member (a unit test reads the enums). Values are what `kubectl`
shows, so they are part of the API: rename one only with a deprecation.
"""

from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    """`status.conditions[].type` on Ebbtide's objects (and the pod condition the packer writes)."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    PREEMPTED = "Preempted"
    PUBLISHED = "Published"
    # LLMService: whether every ready replica holds every adapter of spec.adapters.
    ADAPTERS_LOADED = "AdaptersLoaded"
    AUTOSCALER_DEGRADED = "AutoscalerDegraded"
    SLO_ATTAINABLE = "SLOAttainable"
    # PowerBudget: exactly one of the four is True, the domain's state after the power manager's last tick.
    WITHIN_BUDGET = "WithinBudget"
    CAPPING = "Capping"
    BUDGET_EXCEEDED = "BudgetExceeded"
    INFEASIBLE = "Infeasible"
    # LLMService: a scale-up was held back because its power domain has no room for it.
    POWER_LIMITED = "PowerLimited"
    RESCALING = "Rescaling"  # an MoE replica's expert-parallel width is changing in place
    RESCALE_FAILED = "RescaleFailed"
    # Kubernetes' own pod condition; the packer sets it False/Unschedulable like kube-scheduler does.
    POD_SCHEDULED = "PodScheduled"


class EventType(StrEnum):
    """The two Event types Kubernetes knows."""

    NORMAL = "Normal"
    WARNING = "Warning"


class Reason(StrEnum):
    """Condition reasons and Event reasons (an Event carries the reason of the change it reports)."""

    # Spec problems: permanent until the user changes the object.
    INVALID_SPEC = "InvalidSpec"
    MODEL_DOES_NOT_FIT = "ModelDoesNotFit"
    UNKNOWN_GPU_TYPE = "UnknownGPUType"
    PRIORITY_CLASS_NOT_FOUND = "PriorityClassNotFound"
    NO_NODES_MATCHED = "NoNodesMatched"
    # LLMService lifecycle.
    CREATED = "Created"
    SCALING_UP = "ScalingUp"
    SCALING_DOWN = "ScalingDown"
    SCALED_TO_ZERO = "ScaledToZero"
    CONVERGED = "Converged"
    ALL_REPLICAS_READY = "AllReplicasReady"
    REPLICAS_NOT_READY = "ReplicasNotReady"
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    GANG_RESTARTED = "GangRestarted"
    ROLLING_UPDATE = "RollingUpdate"
    # Autoscaling.
    AUTOSCALED = "Autoscaled"
    AUTOSCALER_DEGRADED = "AutoscalerDegraded"
    METRICS_FRESH = "MetricsFresh"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    HISTORY_UNAVAILABLE = "HistoryUnavailable"
    FORECAST_FAILED = "ForecastFailed"
    ATTAINABLE = "Attainable"
    SLO_UNATTAINABLE = "SLOUnattainable"
    # MoE width changes (controllers/planners/rescale.py).
    RESCALING = "Rescaling"
    RESCALED = "Rescaled"
    RESCALE_FAILED = "RescaleFailed"
    RESCALE_TIMED_OUT = "RescaleTimedOut"
    RESCALE_REFUSED = "RescaleRefused"
    ENGINE_REFUSED_RESCALE = "EngineRefusedRescale"
    ELASTIC_EP_UNAVAILABLE = "ElasticEPUnavailable"
    # FineTuneJob lifecycle, checkpoints and preemption.
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    WORKER_FAILED = "WorkerFailed"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    CHECKPOINTING = "Checkpointing"
    CHECKPOINTED = "Checkpointed"
    PREEMPTION_REQUESTED = "PreemptionRequested"
    PREEMPTED = "Preempted"
    RESUMING = "Resuming"
    RESUMED = "Resumed"
    CAPACITY_RETURNED = "CapacityReturned"
    INVALID_TRAINER_INPUT = "InvalidTrainerInput"
    # Adapters a FineTuneJob publishes to an LLMService (spec.output.publishTo).
    ADAPTER_PUBLISHED = "AdapterPublished"
    PUBLISH_TARGET_NOT_FOUND = "PublishTargetNotFound"
    ADAPTER_LOADED = "AdapterLoaded"
    ADAPTER_LOAD_FAILED = "AdapterLoadFailed"
    ADAPTER_UNLOADED = "AdapterUnloaded"
    # Placement (the packer).
    PREEMPTING = "Preempting"
    UNSCHEDULABLE = "Unschedulable"
    FAILED_SCHEDULING = "FailedScheduling"
    # PowerBudget.
    REPORTED = "Reported"
    WITHIN_BUDGET = "WithinBudget"
    CAPPING = "Capping"
    BUDGET_EXCEEDED = "BudgetExceeded"
    INFEASIBLE = "Infeasible"
    CAPS_CHANGED = "CapsChanged"
    OVERLAPPING_DOMAINS = "OverlappingDomains"
    NVML_REFUSED = "NvmlRefused"
    # LLMService under a power budget.
    POWER_LIMITED = "PowerLimited"
    POWER_AVAILABLE = "PowerAvailable"
