"""Least privilege: the chart's ClusterRole grants exactly adapters/rbac.py, which covers every API call the
controllers make (read from the source) and what kopf needs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from adapters.rbac import CUSTOM_RESOURCES, REQUIRED_RULES, required_triples
from crds.base import GROUP
from crds.generate import CRDS
from tests.helmchart import find, render
from tests.kube import ROOT

CONTROLLERS = ROOT / "controllers"
# The official client's API classes and the API group each one speaks for; "custom" stands for ebbtide.dev.
API_GROUPS = {
    "CoreV1Api": "",
    "PolicyV1Api": "policy",
    "SchedulingV1Api": "scheduling.k8s.io",
    "AppsV1Api": "apps",
    "CoordinationV1Api": "coordination.k8s.io",
    "EventsV1Api": "events.k8s.io",
    "CustomObjectsApi": "custom",
}
VERBS = {
    "read": "get",
    "get": "get",
    "list": "list",
    "create": "create",
    "patch": "patch",
    "delete": "delete",
    "replace": "update",
}
SUBRESOURCES = ("status", "scale", "eviction", "binding", "log")


def _plural(words: list[str]) -> str:
    word = "".join(words)
    if word.endswith("y"):
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("s", "x", "ch")) else "s")


def client_call_triples(method: str, group: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) a kubernetes-client method needs, from its name (list_namespaced_pod -> pods)."""
    verb_word, _, rest = method.partition("_")
    if method.startswith("delete_collection_"):
        verb, rest = "deletecollection", method.removeprefix("delete_collection_")
    else:
        verb = VERBS[verb_word]
    rest = re.sub(r"_for_all_namespaces$", "", rest)
    words = [w for w in rest.split("_") if w not in ("namespaced", "cluster")]
    sub = words.pop() if words[-1] in SUBRESOURCES and len(words) > 1 else None
    if group == "custom":
        kinds = [info for info in CRDS if sub != "scale" or info.scale]
        resources = [info.plural for info in kinds]
        group = GROUP
    else:
        resources = [_plural(words)]
    return {(group, f"{r}/{sub}" if sub else r, verb) for r in resources}


def controller_calls() -> dict[str, set[tuple[str, str, str]]]:
    """Every client call in controllers/ and adapters/: `self.<api>.<method>` in the module that binds `self.<api>`
    to a client API class (kube.py), and `<...>.kube.<api>.<method>` in the modules that borrow the Kube facade's
    API objects. A list method handed to an `Informer(...)` (cache.py) is listed and then watched: list + watch."""
    paths = [*CONTROLLERS.rglob("*.py"), *(ROOT / "adapters").rglob("*.py")]
    trees = {path: ast.parse(path.read_text()) for path in sorted(paths)}
    own: dict[Path, dict[str, str]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            # self.core = client.CoreV1Api(api)
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.targets[0], ast.Attribute)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr.endswith("Api")
                and node.value.func.attr != "ApiClient"
            ):
                cls = node.value.func.attr
                assert cls in API_GROUPS, f"controllers use {cls}: add its API group to API_GROUPS in this test"
                own.setdefault(path, {})[node.targets[0].attr] = API_GROUPS[cls]
    facade = own.get(ROOT / "adapters" / "kube.py", {})
    assert facade, "the Kube facade binds no client API objects: the derivation reads the wrong module"
    calls: dict[str, set[tuple[str, str, str]]] = {}
    for path, tree in trees.items():
        watched = {
            id(arg)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Informer"
            for arg in node.args
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
                continue
            api, base = node.value.attr, node.value.value
            if isinstance(base, ast.Name) and base.id == "self" and api in own.get(path, {}):
                group = own[path][api]
            elif ((isinstance(base, ast.Name) and base.id == "kube") or
                  (isinstance(base, ast.Attribute) and base.attr == "kube")) and api in facade:  # fmt: skip
                group = facade[api]
            else:
                continue
            triples = client_call_triples(node.attr, group)
            if id(node) in watched:
                triples |= {(g, r, "watch") for g, r, _ in triples}
            calls[node.attr] = calls.get(node.attr, set()) | triples
    return calls


def chart_triples(sets: tuple[str, ...] = ()) -> set[tuple[str, str, str]]:
    role = find(render(*sets), "ClusterRole", "-operator")
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def test_the_derivation_reads_client_method_names_correctly() -> None:
    assert client_call_triples("list_namespaced_pod", "") == {("", "pods", "list")}
    assert client_call_triples("create_namespaced_pod_disruption_budget", "policy") == {
        ("policy", "poddisruptionbudgets", "create")
    }
    assert client_call_triples("list_priority_class", "scheduling.k8s.io") == {
        ("scheduling.k8s.io", "priorityclasses", "list")
    }
    assert client_call_triples("patch_namespaced_custom_object_scale", "custom") == {
        (GROUP, "llmservices/scale", "patch")
    }
    assert client_call_triples("create_namespaced_pod_eviction", "") == {("", "pods/eviction", "create")}
    assert client_call_triples("read_node", "") == {("", "nodes", "get")}


def test_every_api_call_in_controllers_is_covered_by_required_rules() -> None:
    calls = controller_calls()
    assert {"list_pod_for_all_namespaces", "create_namespaced_pod", "patch_namespaced_custom_object_status"} <= set(
        calls
    )
    assert ("", "pods", "watch") in calls["list_pod_for_all_namespaces"], "the pod cache watches what it lists"
    required = required_triples()
    missing = {m: sorted(t - required) for m, t in calls.items() if t - required}
    assert not missing, f"add these to adapters/rbac.py REQUIRED_RULES (and the chart's ClusterRole): {missing}"


def test_controller_rules_grant_nothing_the_controllers_do_not_call() -> None:
    called = {t for triples in controller_calls().values() for t in triples}
    granted = {t for rule in REQUIRED_RULES if rule.needed_by == "controllers" for t in rule.triples()}
    assert granted - called == set(), "adapters/rbac.py grants permissions no call in controllers/ needs"


def test_kopf_rules_watch_every_kind_the_operator_handles_and_elect_through_peering() -> None:
    kopf = {t for rule in REQUIRED_RULES if rule.needed_by == "kopf" for t in rule.triples()}
    assert set(CUSTOM_RESOURCES) == {info.plural for info in CRDS}
    for plural in CUSTOM_RESOURCES:
        assert {(GROUP, plural, "list"), (GROUP, plural, "watch"), (GROUP, plural, "patch")} <= kopf
    assert ("", "events", "create") in kopf
    assert {("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")} <= kopf


def test_every_cached_kind_is_granted_list_and_watch() -> None:
    required = required_triples()
    cached = [("", "pods"), ("", "nodes"), ("", "services"), ("policy", "poddisruptionbudgets")]
    for group, resource in [*cached, ("scheduling.k8s.io", "priorityclasses"), *((GROUP, p) for p in CUSTOM_RESOURCES)]:
        assert {(group, resource, "list"), (group, resource, "watch")} <= required, resource


def test_chart_cluster_role_grants_exactly_the_required_rules() -> None:
    granted, required = chart_triples(), required_triples()
    assert granted == required, f"chart grants extra {sorted(granted - required)}, lacks {sorted(required - granted)}"


def test_chart_grants_no_wildcards_and_binds_the_role_to_the_operator_account() -> None:
    objs = render()
    role = find(objs, "ClusterRole", "-operator")
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])
    binding = find(objs, "ClusterRoleBinding", "-operator")
    account = find(objs, "ServiceAccount", "-operator")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "ebbtide-system"}
    ]
    deployment = find(objs, "Deployment", "-operator")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
