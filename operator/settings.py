"""Operator settings from environment (EBBTIDE_*) and command-line flags."""

from __future__ import annotations

import argparse
from typing import Literal

from pydantic import Field
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
        default="default-scheduler",
        description="schedulerName on created pods; ebbtide-packer once the packer runs.",
    )
    resync_seconds: float = Field(default=10.0, gt=0, le=3600, description="Periodic reconcile interval.")
    log_format: Literal["json", "plain"] = Field(default="json", description="Log line format.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")


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
