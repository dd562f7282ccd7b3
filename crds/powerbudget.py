"""PowerBudget: a power domain (nodes matched by a selector) and the watts it may draw."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crds.base import ApiModel, Condition, ObjectMeta, conditions_field


class CappingPolicy(ApiModel):
    """How per-GPU caps are chosen when the domain would exceed its budget."""

    order: Literal["LowestPriorityFirst", "Proportional"] = Field(
        default="LowestPriorityFirst",
        description="LowestPriorityFirst caps the lowest-priority pods' GPUs first; Proportional caps all alike.",
    )
    floor_watts_per_gpu: float = Field(
        default=0, ge=0, le=2000, description="Never cap a GPU below this (0 = the GPU's own minimum)."
    )
    hysteresis_percent: float = Field(
        default=5, ge=0, le=50, description="Lift caps only once draw is this far below the budget."
    )
    exempt_priority_above: int | None = Field(
        default=None, description="Pods with priority above this value are never capped."
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
    drawn_watts: float | None = Field(default=None, description="Measured draw (DCGM), summed over the domain's GPUs.")
    forecast_watts: float | None = Field(
        default=None, description="Forecast draw over the lead time under the caps in force."
    )
    demand_watts: float | None = Field(default=None, description="Forecast draw over the lead time with no caps.")
    headroom_watts: float | None = Field(
        default=None, description="Budget minus the larger of drawn and forecast watts: what a scale-up may add."
    )
    seconds_over_budget: float | None = Field(
        default=None, description="How long measured draw has been over the budget (0 when it is not)."
    )
    oversubscription: float | None = Field(default=None, description="peakWatts / budgetWatts.")
    caps: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Caps in force: node -> GPU index -> watts (uncapped GPUs are absent)."
    )
    observed_generation: int | None = Field(default=None, description="The generation this status reflects.")
    conditions: list[Condition] = conditions_field("Ready, WithinBudget, Capping, BudgetExceeded, Infeasible")


class PowerBudget(ApiModel):
    """A cluster-scoped power domain with a budget in watts."""

    api_version: Literal["ebbtide.dev/v1alpha1"] = Field(default="ebbtide.dev/v1alpha1", alias="apiVersion")
    kind: Literal["PowerBudget"] = "PowerBudget"
    metadata: ObjectMeta
    spec: PowerBudgetSpec
    status: PowerBudgetStatus = Field(default_factory=PowerBudgetStatus)
