"""The Kubernetes API permissions the operator needs: the one list the Helm chart's ClusterRole must equal.

Rules marked `controllers` cover the client calls in controllers/ and adapters/ (the Kube facade in kube.py, and
the list-and-watch informers in cache.py that every read comes from); rules marked `kopf` cover what the framework
does for the handlers (watches, progress annotations, events, peering). tests/unit/helm/test_rbac.py derives the
calls from the source, checks each is covered here, and compares this table with the rendered ClusterRole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crds.base import GROUP

CUSTOM_RESOURCES = ("llmservices", "finetunejobs", "powerbudgets")


@dataclass(frozen=True)
class Rule:
    """One RBAC rule (API group, resources, verbs), who needs it, and why."""

    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    needed_by: Literal["controllers", "kopf"]
    why: str

    def triples(self) -> set[tuple[str, str, str]]:
        """(apiGroup, resource, verb) for every combination the rule grants."""
        return {(self.api_group, r, v) for r in self.resources for v in self.verbs}


REQUIRED_RULES: tuple[Rule, ...] = (
    Rule(GROUP, CUSTOM_RESOURCES, ("list", "watch", "patch"), "controllers", "the watch-fed cache; annotate them"),
    Rule(GROUP, tuple(f"{r}/status" for r in CUSTOM_RESOURCES), ("patch",), "controllers", "write status"),
    Rule(GROUP, ("llmservices/scale",), ("patch",), "controllers", "the autoscaler writes replicas like HPA"),
    Rule("", ("pods",), ("list", "watch", "create", "delete", "patch"), "controllers", "the cache; gangs, workers"),
    Rule("", ("services",), ("list", "watch", "create", "patch"), "controllers", "a Service per LLMService"),
    Rule(
        "policy",
        ("poddisruptionbudgets",),
        ("list", "watch", "create", "patch"),
        "controllers",
        "a PDB per LLMService; the packer evicts only as far as it allows",
    ),
    Rule("scheduling.k8s.io", ("priorityclasses",), ("list", "watch"), "controllers", "priorityClassName exists"),
    Rule("", ("nodes",), ("list", "watch"), "controllers", "GPU nodes a PowerBudget covers and the packer places on"),
    Rule("", ("nodes",), ("patch",), "controllers", "the power manager writes per-GPU caps for the node agent"),
    Rule("", ("bindings",), ("create",), "controllers", "the packer binds whole gangs (a secondary scheduler)"),
    Rule("", ("pods/status",), ("patch",), "controllers", "the packer marks gangs it cannot place Unschedulable"),
    Rule("", ("events",), ("create",), "controllers", "the packer's Preempting and PreemptionRequested Events"),
    Rule(GROUP, CUSTOM_RESOURCES, ("list", "watch", "patch"), "kopf", "watch handled kinds; progress annotations"),
    Rule("", ("events",), ("create",), "kopf", "Events a user sees in kubectl describe"),
    Rule(
        "kopf.dev",
        ("clusterkopfpeerings",),
        ("get", "list", "watch", "patch"),
        "kopf",
        "leader election (the packer's cache reads the same object)",
    ),
    Rule("", ("namespaces",), ("list", "watch"), "kopf", "cluster-wide watching"),
    Rule("apiextensions.k8s.io", ("customresourcedefinitions",), ("list", "watch"), "kopf", "resource discovery"),
)


def required_triples(rules: tuple[Rule, ...] = REQUIRED_RULES) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) the operator needs."""
    return {t for rule in rules for t in rule.triples()}
