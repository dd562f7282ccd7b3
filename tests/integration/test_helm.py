"""The Helm chart on the real API server: every object accepted (restricted pods included), upgrade works, and
uninstall removes everything but the CRDs. The release's operator pods are KWOK pods that run no code, and its
peering and PriorityClass names are its own, so the session's operator and stories are undisturbed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.helmchart import CHART, helm
from tests.kube import Cluster, wait_until


@pytest.fixture
def release(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """(release, namespace): a namespace that enforces the restricted Pod Security Standard."""
    suffix = uuid.uuid4().hex[:6]
    ns = f"helm-{suffix}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/warn=restricted")  # fmt: skip
    # The node agent needs root and CAP_SYS_ADMIN for NVML: it gets its own namespace that admits privileged pods.
    cluster.kubectl("create", "namespace", f"agents-{suffix}")
    cluster.kubectl("label", "namespace", f"agents-{suffix}", "pod-security.kubernetes.io/enforce=privileged")
    yield f"eb-{suffix}", ns
    helm("uninstall", f"eb-{suffix}", "-n", ns, kubeconfig=cluster.kubeconfig, check=False)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", f"agents-{suffix}", "--wait=false", check=False)


def values(suffix: str) -> list[str]:
    return [
        "--set", f"operator.peering.name=ebbtide-{suffix}",
        "--set", "nodeAgent.enabled=true", "--set", f"nodeAgent.namespace=agents-{suffix}",
        "--set", f"priorityClasses.items[0].name=helm-high-{suffix}", "--set", "priorityClasses.items[0].value=5000",
        "--set", f"priorityClasses.items[1].name=helm-low-{suffix}", "--set", "priorityClasses.items[1].value=50",
    ]  # fmt: skip


def manifest_objects(cluster: Cluster, name: str, ns: str) -> list[dict[str, Any]]:
    text = helm("get", "manifest", name, "-n", ns, kubeconfig=cluster.kubeconfig).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def exists(cluster: Cluster, obj: dict[str, Any], ns: str) -> bool:
    kind = obj["kind"].lower() + "." + (obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else "")
    args = ["get", kind.rstrip("."), obj["metadata"]["name"], "--ignore-not-found", "-o", "name"]
    if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "PriorityClass", "ClusterKopfPeering"):
        args += ["-n", ns]
    return bool(cluster.kubectl(*args).stdout.strip())


def test_install_upgrade_uninstall_on_the_real_api_server(cluster: Cluster, release: tuple[str, str]) -> None:
    name, ns = release
    suffix = name.split("-", 1)[1]
    kc = cluster.kubeconfig
    # The session already applied the CRDs: helm skips existing ones from crds/ and must still succeed.
    out = helm("install", name, str(CHART), "-n", ns, *values(suffix), kubeconfig=kc).stdout
    assert "STATUS: deployed" in out
    notes = out.split("NOTES:")[1]
    assert f"rollout status deployment/{name}-ebbtide-operator" in notes and f"agents-{suffix}" in notes

    objs = manifest_objects(cluster, name, ns)
    kinds = {o["kind"] for o in objs}
    assert {
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "Service",
        "ConfigMap",
        "PriorityClass",
        "ClusterKopfPeering",
        "PodDisruptionBudget",
    } <= kinds
    missing = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in objs
        if not exists(cluster, o, o["metadata"].get("namespace") or ns)
    ]
    assert not missing, missing

    # Pod Security admission (restricted) checks pods, not Deployments: the controllers must get pods created.
    def pods(component: str, namespace: str = ns) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = cluster.get(
            "pods", "-n", namespace, "-l", f"app.kubernetes.io/component={component}"
        )["items"]
        return items

    wait_until("2 operator pods admitted", lambda: len(pods("operator")) == 2, 30)
    wait_until("redis pod admitted", lambda: len(pods("redis")) == 1, 30)
    gpu_nodes = len(cluster.get("nodes", "-l", "nvidia.com/gpu.present=true")["items"])
    wait_until("a node agent per GPU node", lambda: len(pods("node-agent", f"agents-{suffix}")) == gpu_nodes, 30)

    sa = f"system:serviceaccount:{ns}:{name}-ebbtide-operator"
    can = {
        args: cluster.kubectl("auth", "can-i", *args, "--as", sa, check=False).stdout.strip()
        for args in (("watch", "llmservices.ebbtide.dev"), ("patch", "llmservices.ebbtide.dev", "--subresource=scale"),
                     ("create", "pods", "-n", "default"), ("delete", "nodes"), ("get", "secrets", "-n", ns))
    }  # fmt: skip
    assert list(can.values()) == ["yes", "yes", "yes", "no", "no"], can

    helm("upgrade", name, str(CHART), "-n", ns, *values(suffix), "--set", "operator.replicas=1",
         "--set", "operator.resyncSeconds=5", kubeconfig=kc)  # fmt: skip
    status = json.loads(helm("status", name, "-n", ns, "-o", "json", kubeconfig=kc).stdout)
    assert status["version"] == 2 and status["info"]["status"] == "deployed"
    dep = cluster.get("deployment", f"{name}-ebbtide-operator", "-n", ns)
    assert dep["spec"]["replicas"] == 1
    assert "--resync-seconds=5" in dep["spec"]["template"]["spec"]["containers"][0]["args"]

    helm("uninstall", name, "-n", ns, "--wait", "--timeout", "60s", kubeconfig=kc)
    left = [f"{o['kind']}/{o['metadata']['name']}" for o in objs if exists(cluster, o, ns)]
    assert not left, left
    for crd in ("llmservices.ebbtide.dev", "finetunejobs.ebbtide.dev", "powerbudgets.ebbtide.dev",
                "clusterkopfpeerings.kopf.dev"):  # fmt: skip
        assert cluster.exists("crd", crd), f"uninstall removed CRD {crd}"


def test_invalid_values_are_refused_before_anything_reaches_the_cluster(
    cluster: Cluster, release: tuple[str, str]
) -> None:
    name, ns = release
    proc = helm("install", name, str(CHART), "-n", ns, "--set", "operator.replicas=-1",
                kubeconfig=cluster.kubeconfig, check=False)  # fmt: skip
    assert proc.returncode != 0 and "/operator/replicas" in proc.stderr, proc.stderr
    assert helm("list", "-n", ns, "-q", kubeconfig=cluster.kubeconfig).stdout.strip() == ""
