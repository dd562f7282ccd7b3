"""The Helm chart: lint-clean, CRDs from the one source, restricted pods, HA operator, options that render, bad
values rejected naming the value."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helmchart import CHART, find, helm, render, service_link_env
from tests.kube import ROOT

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objs if o["kind"] in WORKLOADS]


def test_chart_crds_are_the_generated_manifests() -> None:
    source = {p.name: p.read_text() for p in (ROOT / "crds" / "manifests").glob("*.yaml")}
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert chart == source, "helm/ebbtide/crds differs from crds/manifests: run `make helm-crds`"


def test_lint_is_clean_and_template_renders_without_warnings() -> None:
    lint = helm("lint", "--strict", str(CHART), "--set", "nodeAgent.enabled=true")
    assert "0 chart(s) failed" in lint.stdout and "[WARNING]" not in lint.stdout, lint.stdout
    proc = helm("template", "eb", str(CHART))
    assert proc.stderr == "", proc.stderr


def test_every_pod_but_the_node_agent_meets_the_restricted_pod_security_standard() -> None:
    specs = pod_specs(render("nodeAgent.enabled=true"))
    assert {name.rsplit("-", 1)[-1] for name, _ in specs} >= {"operator", "redis", "agent"}
    for name, spec in specs:
        if name.endswith("-node-agent"):
            continue  # NVML needs root and CAP_SYS_ADMIN (its own test states what it gets)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert "limits" in c["resources"] and "requests" in c["resources"], name


def test_operator_runs_two_peered_replicas_with_health_probes_and_metrics() -> None:
    objs = render()
    dep = find(objs, "Deployment", "-operator")
    assert dep["spec"]["replicas"] == 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert "--peering=ebbtide" in container["args"]
    assert find(objs, "ClusterKopfPeering", "ebbtide")["metadata"]["name"] == "ebbtide"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert "--metrics-port=8080" in container["args"] and "--health-port=8081" in container["args"]
    svc = find(objs, "Service", "-metrics")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert find(objs, "PodDisruptionBudget", "-operator")["spec"]["minAvailable"] == 1


def test_bundled_redis_is_passed_to_the_operator_and_an_external_url_replaces_it() -> None:
    objs = render()
    env = {
        e["name"]: e.get("value")
        for e in find(objs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["EBBTIDE_REDIS_URL"] == "redis://eb-ebbtide-redis.ebbtide-system.svc:6379/0"
    redis = find(objs, "StatefulSet", "-redis")
    assert redis["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7"

    external = render("redis.enabled=false", "redis.external.url=redis://cache.example:6379/2")
    assert not [o for o in external if o["kind"] == "StatefulSet"]
    env = {
        e["name"]: e.get("value")
        for e in find(external, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["EBBTIDE_REDIS_URL"] == "redis://cache.example:6379/2"


def operator_env(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value")
        for e in find(objs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]
    }


@pytest.mark.parametrize(("ip", "url"), [("10.96.200.10", "redis://10.96.200.10:6379/0"),
                                          ("fd00:10:96::20a", "redis://[fd00:10:96::20a]:6379/0")])  # fmt: skip
def test_a_fixed_redis_cluster_ip_is_the_operators_redis_address_without_dns(ip: str, url: str) -> None:
    objs = render(f"redis.service.clusterIP={ip}")
    assert find(objs, "Service", "-redis")["spec"]["clusterIP"] == ip
    assert operator_env(objs)["EBBTIDE_REDIS_URL"] == url
    assert "clusterIP" not in find(render(), "Service", "-redis")["spec"]
    # An external Redis wins: the bundled one, and its address, are not rendered.
    external = render("redis.enabled=false", "redis.external.url=redis://cache.example:6379/2",
                      f"redis.service.clusterIP={ip}")  # fmt: skip
    assert operator_env(external)["EBBTIDE_REDIS_URL"] == "redis://cache.example:6379/2"


def test_node_agent_runs_the_nvml_agent_with_only_the_privilege_nvml_needs() -> None:
    assert not [o for o in render() if o["kind"] == "DaemonSet"]
    objs = render("nodeAgent.enabled=true", "nodeAgent.namespace=gpu-agents")
    agent = find(objs, "DaemonSet", "-node-agent")
    assert agent["metadata"]["namespace"] == "gpu-agents"
    spec = agent["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    (container,) = spec["containers"]
    assert container["command"] == ["python", "/app/operator/nodeagent.py"]
    sc = container["securityContext"]
    assert sc["runAsUser"] == 0 and sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert not sc.get("privileged") and not spec.get("hostNetwork") and not spec.get("hostPID")
    role = find(objs, "ClusterRole", "-node-agent")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]}]
    assert find(objs, "ServiceAccount", "-node-agent")["metadata"]["namespace"] == "gpu-agents"


def test_monitors_render_when_enabled_and_engines_get_a_service_label() -> None:
    kinds = {o["kind"] for o in render()}
    assert "ServiceMonitor" not in kinds and "PodMonitor" not in kinds
    objs = render("metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true")
    assert find(objs, "ServiceMonitor", "-operator")["spec"]["endpoints"][0]["port"] == "metrics"
    relabel = find(objs, "PodMonitor", "-engines")["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_ebbtide_dev_service"], "targetLabel": "service"} in relabel


def test_the_operator_queries_prometheus_by_the_labels_the_pod_monitor_gives_engine_series() -> None:
    from adapters.engine_metrics import DEFAULT_SELECTOR

    objs = render("metrics.podMonitor.enabled=true")
    relabel = find(objs, "PodMonitor", "-engines")["spec"]["podMetricsEndpoints"][0]["relabelings"]
    service_label = next(
        r["targetLabel"] for r in relabel if r["sourceLabels"] == ["__meta_kubernetes_pod_label_ebbtide_dev_service"]
    )
    # prometheus-operator labels every PodMonitor target with its pod's `namespace`.
    assert DEFAULT_SELECTOR.split(",") == ['namespace="{namespace}"', f'{service_label}="{{service}}"']


def test_example_priority_classes_match_the_repository_examples() -> None:
    import yaml

    classes = {o["metadata"]["name"]: o["value"] for o in render() if o["kind"] == "PriorityClass"}
    examples = {
        d["metadata"]["name"]: d["value"]
        for d in yaml.safe_load_all((ROOT / "examples" / "priorityclasses.yaml").read_text())
    }
    assert classes == examples
    assert not [o for o in render("priorityClasses.create=false") if o["kind"] == "PriorityClass"]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("operator.replicas=-1", "/operator/replicas"),
        ("operator.logFormat=xml", "/operator/logFormat"),
        ("operator.metricsPort=70000", "/operator/metricsPort"),
        ("redis.external.url=http://not-redis", "/redis/external/url"),
        ("redis.service.clusterIP=redis.local", "/redis/service/clusterIP"),
        ("operator.replica=2", "'replica'"),
        ("operator.metricsSource=kafka", "/operator/metricsSource"),
        ("operator.metricsSource=prometheus", "/operator/prometheus/url"),
        ("operator.prometheus.url=prometheus:9090", "/operator/prometheus/url"),
    ],
)
def test_invalid_values_fail_on_the_schema_naming_the_value(override: str, named: str) -> None:
    proc = helm("template", "eb", str(CHART), "--set", override, check=False)
    assert proc.returncode != 0, f"{override} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert named in proc.stderr, proc.stderr


def operator_settings(objs: list[dict[str, Any]], namespace: str = "ebbtide-system") -> Any:
    """The operator's own settings parser applied to the rendered container's args and env, with the service-link
    variables the kubelet would add unless the pod turns them off."""
    import importlib.util
    import os
    import sys
    from unittest import mock

    # operator/ is not a package (it would shadow the standard library's `operator`): load its settings by path.
    spec = importlib.util.spec_from_file_location("ebbtide_operator_settings", ROOT / "operator" / "settings.py")
    assert spec and spec.loader
    settings = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = settings  # pydantic resolves the model's annotations through sys.modules
    spec.loader.exec_module(settings)
    pod = find(objs, "Deployment", "-operator")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    links = service_link_env(objs, namespace) if pod.get("enableServiceLinks", True) else {}
    env = {**links, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
    with mock.patch.dict(os.environ, env):
        return settings.parse(container["args"])


def test_operator_accepts_every_flag_and_variable_the_chart_passes() -> None:
    s = operator_settings(render())
    assert (s.peering, s.metrics_port, s.health_port, s.scheduler_name) == ("ebbtide", 8080, 8081, "ebbtide-packer")
    assert s.packer and s.autoscaler and s.redis_url == "redis://eb-ebbtide-redis.ebbtide-system.svc:6379/0"
    s = operator_settings(render("operator.packer=false", "operator.schedulerName=default-scheduler"))
    assert not s.packer and s.scheduler_name == "default-scheduler"
    assert s.metrics_source == "pod" and s.prometheus_url is None


def test_the_autoscaler_can_read_engine_metrics_from_prometheus() -> None:
    url = "http://prometheus-operated.monitoring.svc:9090"
    s = operator_settings(render("operator.metricsSource=prometheus", f"operator.prometheus.url={url}"))
    assert (s.metrics_source, s.prometheus_url, s.prometheus_selector) == ("prometheus", url, None)
    selector = 'namespace="{namespace}",job="vllm",app="{service}"'
    s = operator_settings(
        render(
            "operator.metricsSource=prometheus",
            f"operator.prometheus.url={url}",
            f"operator.prometheus.selector={selector.replace(',', chr(92) + ',')}",
        )
    )
    assert s.prometheus_selector == selector
    with pytest.raises(ValueError, match="needs --prometheus-url"):
        type(s).model_validate({"metrics_source": "prometheus"})


@pytest.mark.parametrize("release", ["ebbtide", "eb"])
def test_the_operator_starts_beside_the_services_of_its_own_release(release: str) -> None:
    # A release named ebbtide names its Services ebbtide-metrics and ebbtide-redis: with service links on, the
    # kubelet injects EBBTIDE_METRICS_PORT=tcp://10.96.x.y:8080, which the EBBTIDE_* settings read as metrics_port.
    objs = render(release=release)
    s = operator_settings(objs)
    assert (s.metrics_port, s.health_port) == (8080, 8081)
    if release == "ebbtide":
        assert service_link_env(objs, "ebbtide-system")["EBBTIDE_METRICS_PORT"].startswith("tcp://")


def test_no_pod_of_the_chart_gets_service_link_variables() -> None:
    specs = pod_specs(render("nodeAgent.enabled=true"))
    assert len(specs) == 3
    for name, spec in specs:
        assert spec["enableServiceLinks"] is False, name


def test_redis_can_be_placed_like_the_operator() -> None:
    # Found installing onto the real node: the operator could tolerate the node pool's taint, Redis could not, so
    # the bundled Redis stayed Pending wherever every node is tainted.
    toleration = {"key": "pool", "operator": "Exists", "effect": "NoSchedule"}
    objs = render("redis.nodeSelector.pool=infra", "redis.tolerations[0].key=pool",
                  "redis.tolerations[0].operator=Exists", "redis.tolerations[0].effect=NoSchedule")  # fmt: skip
    spec = find(objs, "StatefulSet", "-redis")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"pool": "infra"} and spec["tolerations"] == [toleration]
    assert "tolerations" not in find(render(), "StatefulSet", "-redis")["spec"]["template"]["spec"]
