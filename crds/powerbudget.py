"""PowerBudget: a power domain (nodes matched by a selector) and the watts it may draw."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crds.base import RESERVED, ApiModel, Condition, ObjectMeta, conditions_field


class CappingPolicy(ApiModel):
    """How per-GPU caps are chosen when the domain would exceed its budget."""

    order: Literal["LowestPriorityFirst", "Proportional"] = Field(
        default="LowestPriorityFirst",
        description="LowestPriorityFirst caps the lowest-priority pods' GPUs first; Proportional caps all alike."
        + RESERVED,
    )
    floor_watts_per_gpu: float = Field(
        default=0, ge=0, le=2000, description="Never cap a GPU below this (0 = the GPU's own minimum)." + RESERVED
    )
    hysteresis_percent: float = Field(
        default=5, ge=0, le=50, description="Lift caps only once draw is this far below the budget." + RESERVED
    )
    exempt_priority_above: int | None = Field(
        default=None, description="Pods with priority above this value are never capped." + RESERVED
    )


class PowerBudgetSpec(ApiModel):
    """Desired state of a PowerBudget."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Labels selecting the domain's nodes (empty selects every GPU node)."
    )
    budget_watts: float = Field(gt=0, le=1e9, description="Most watts the domain's GPUs may draw together.")
    policy: CappingPolicy = Field(default_factory=CappingPolicy, description="Capping policy.")


class PowerBudgetStatus(ApiModel):
    """Observed state of a PowerBudget."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    nodes: int | None = Field(default=None, description="Nodes in the domain.")
    gpus: int | None = Field(default=None, description="GPUs in the domain.")
    peak_watts: float | None = Field(default=None, description="Sum of the domain GPUs' TDP.")
    drawn_watts: float | None = Field(default=None, description="Measured draw." + RESERVED)
    forecast_watts: float | None = Field(default=None, description="Forecast draw over the control horizon." + RESERVED)
    headroom_watts: float | None = Field(default=None, description="Budget minus drawn watts." + RESERVED)
    oversubscription: float | None = Field(default=None, description="peakWatts / budgetWatts.")
    caps: dict[str, float] = Field(
        default_factory=dict, description="Per-GPU cap in force, per node (watts)." + RESERVED
    )
    observed_generation: int | None = Field(default=None, description="The generation this status reflects.")
    conditions: list[Condition] = conditions_field("Ready, Degraded, ...")


class PowerBudget(ApiModel):
    """A cluster-scoped power domain with a budget in watts."""

    api_version: Literal["ebbtide.dev/v1alpha1"] = Field(default="ebbtide.dev/v1alpha1", alias="apiVersion")
    kind: Literal["PowerBudget"] = "PowerBudget"
    metadata: ObjectMeta
    spec: PowerBudgetSpec
    status: PowerBudgetStatus = Field(default_factory=PowerBudgetStatus)
