"""Operator settings from environment (EBBTIDE_*) and command-line flags."""

from __future__ import annotations

import argparse
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Every knob of the operator process; flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="EBBTIDE_", extra="ignore")

    kubeconfig: str | None = Field(default=None, description="Kubeconfig path; in-cluster config when unset.")
    namespace: str | None = Field(default=None, description="Watch one namespace only; all when unset.")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="Prometheus /metrics port (0 = off).")
    health_port: int = Field(default=8081, ge=0, le=65535, description="Liveness/readiness /healthz port.")
    peering: str = Field(default="ebbtide", description="kopf peering name; replicas with it elect one leader.")
    standalone: bool = Field(default=False, description="Run without peering (single replica, dev only).")
    priority: int | None = Field(default=None, description="Peering priority; random when unset (HA).")
    peering_lifetime_seconds: int = Field(
        default=60, ge=5, le=3600, description="How long a silent peer keeps its claim."
    )
    scheduler_name: str = Field(
        default="ebbtide-packer",
        description="schedulerName on created pods: ebbtide-packer (gang, priority, preemption) or default-scheduler.",
    )
    packer: bool = Field(default=True, description="Run the packer (the scheduler for ebbtide-packer pods).")
    packer_resync_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="The packer runs when the cache reports a change that can alter a placement, and this often.",
    )
    checkpoint_deadline_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Preemption: evict a fine-tuning gang after this long without a checkpoint.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for autoscaler history (redis://host:6379/0); in memory when unset."
    )
    autoscale_interval_seconds: float = Field(
        default=15.0, gt=0, le=3600, description="Autoscaler decision interval per service."
    )
    autoscaler: bool = Field(default=True, description="Run the autoscaler (spec.scaling.policy forecast/reactive).")
    power: bool = Field(default=True, description="Run the power manager (per-GPU caps under every PowerBudget).")
    power_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Power manager tick: DCGM scrape, caps, status. One second lets the emergency path cap within "
        "a second of measured draw crossing a budget.",
    )
    metrics_source: Literal["pod", "prometheus"] = Field(
        default="pod",
        description="Where the autoscaler reads engine metrics: pod (scrape every engine pod, see "
        "--metrics-url-template) or prometheus (query --prometheus-url).",
    )
    prometheus_url: str | None = Field(
        default=None,
        pattern=r"^https?://.+",
        description="Base URL of the Prometheus HTTP API for --metrics-source prometheus "
        "(e.g. http://prometheus-operated.monitoring.svc:9090).",
    )
    prometheus_selector: str | None = Field(
        default=None,
        description="PromQL label selector of one service's engine series, {namespace} and {service} filled in; "
        'default namespace="{namespace}",service="{service}", the labels the chart\'s PodMonitor gives them.',
    )
    metrics_url_template: str = Field(
        default="http://{podIP}:{port}/metrics",
        description="Where engine metrics are scraped; {engineURL} uses the pod's ebbtide.dev/engine-url.",
    )
    forecast_error_window: int = Field(
        default=200, ge=5, le=10000, description="Realised forecast errors kept per horizon (burst memory)."
    )
    default_cold_start_seconds: float = Field(
        default=180.0, gt=0, description="Cold start assumed until one is measured from pod readiness."
    )
    deregistration_seconds: float = Field(
        default=5.0, ge=0, le=600, description="Scale-in: wait this long after unrouting a gang before draining it."
    )
    resync_seconds: float = Field(default=10.0, gt=0, le=3600, description="Periodic reconcile interval.")
    log_format: Literal["json", "plain"] = Field(default="json", description="Log line format.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")

    @model_validator(mode="after")
    def _prometheus_needs_its_url(self) -> OperatorSettings:
        """Reading metrics from Prometheus needs to know where Prometheus is."""
        if self.metrics_source == "prometheus" and not self.prometheus_url:
            raise ValueError("--metrics-source prometheus needs --prometheus-url (EBBTIDE_PROMETHEUS_URL)")
        return self


def parse(argv: list[str] | None = None) -> OperatorSettings:
    """Settings from the environment, overridden by flags such as --metrics-port 9090."""
    base = OperatorSettings()
    parser = argparse.ArgumentParser(prog="ebbtide-operator", description="The Ebbtide operator.")
    for name, info in OperatorSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=info.description)
        else:
            parser.add_argument(flag, default=None, help=info.description)
    args = vars(parser.parse_args(argv))
    overrides = {k: v for k, v in args.items() if v is not None}
    return OperatorSettings.model_validate({**base.model_dump(), **overrides})
