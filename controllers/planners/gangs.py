"""Pod gangs of an LLMService replica: which pods, their roles, GPUs, labels and full manifests."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from catalogue.gpus import GPU_PRODUCT_LABEL, GPU_RESOURCE
from controllers.planners.drain import termination_grace_s
from controllers.planners.engines import DEFAULT_IMAGES, PodRole, lora_enabled, serving_command
from controllers.planners.validation import allowed_gpus
from crds import labels as L
from crds.base import API_VERSION
from crds.llmservice import LLMServiceSpec


@dataclass(frozen=True)
class Owner:
    """What pods need to know about the object that owns them."""

    kind: str
    name: str
    namespace: str
    uid: str


def pod_roles(spec: LLMServiceSpec) -> list[tuple[PodRole, int]]:
    """(role, GPUs) of every pod in one replica: one server pod, a leader plus workers, or prefill + decode."""
    if spec.roles is not None:
        return [(PodRole("prefill", i, 1), spec.gpu.count) for i in range(spec.roles.prefill)] + [
            (PodRole("decode", i, 1), spec.gpu.count) for i in range(spec.roles.decode)
        ]
    if spec.gpu.count <= spec.gpu.per_node:
        return [(PodRole("server", 0, 1), spec.gpu.count)]
    nodes = spec.gpu.count // spec.gpu.per_node
    return [(PodRole("leader", 0, nodes), spec.gpu.per_node)] + [
        (PodRole("worker", i, nodes), spec.gpu.per_node) for i in range(nodes - 1)
    ]


def gangs_gpus(spec: LLMServiceSpec) -> int:
    """GPUs one replica requests."""
    return sum(g for _, g in pod_roles(spec))


def pod_name(service: str, replica: int, role: PodRole) -> str:
    """Deterministic names make creation idempotent: a restarted operator finds, not duplicates, its pods."""
    if role.role == "server":
        return f"{service}-r{replica}"
    if role.role == "leader":
        return f"{service}-r{replica}-leader"
    return f"{service}-r{replica}-{role.role}-{role.rank}"


def template_hash(spec: LLMServiceSpec) -> str:
    """A short hash of everything that shapes a pod, to spot gangs built from an older spec."""
    shaping = spec.model_dump(mode="json", exclude={"replicas", "scaling", "drain_grace_period_seconds", "adapters"})
    # Adapters load at run time (POST /v1/load_lora_adapter): only turning LoRA on needs new engines.
    shaping["lora"] = lora_enabled(spec)
    if spec.parallelism.elastic_expert:
        # An elastic MoE replica changes its width in place (rescale.py), not by a rolling update.
        shaping["parallelism"].pop("expert", None)
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:10]


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def gpu_affinity(types: list[str]) -> dict[str, Any] | None:
    """Required node affinity on the GPU product label, when the user restricted the products."""
    if not types:
        return None
    profiles, _ = allowed_gpus(types)
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [p.product for p in profiles]}
                        ]
                    }
                ]
            }
        }
    }


def replica_pods(owner: Owner, spec: LLMServiceSpec, replica: int, scheduler_name: str) -> list[dict[str, Any]]:
    """Every pod manifest of replica `replica`."""
    roles = pod_roles(spec)
    gang = f"{owner.name}-r{replica}"
    leader_host = f"{pod_name(owner.name, replica, PodRole('leader', 0, 1))}.{owner.name}-pods.{owner.namespace}.svc"
    pods = []
    for role, gpus in roles:
        role = PodRole(role.role, role.rank, role.nodes, leader_host if role.nodes > 1 else None)
        command, args = serving_command(spec, role)
        entry = role.role in ("server", "leader", "prefill")
        pod_labels = {
            L.SERVICE: owner.name,
            L.REPLICA: str(replica),
            L.ROLE: role.role,
            L.RANK: str(role.rank),
            L.GANG: gang,
            L.ENGINE: spec.engine.type,
            L.TEMPLATE_HASH: template_hash(spec),
            L.MANAGED_BY: L.OPERATOR,
        }
        if entry:
            pod_labels[L.ENTRYPOINT] = "true"
        annotations = (
            {L.EXPERT_WIDTH: str(spec.parallelism.expert)} if entry and spec.parallelism.elastic_expert else {}
        )
        container: dict[str, Any] = {
            "name": "engine",
            "image": spec.engine.image or DEFAULT_IMAGES[spec.engine.type],
            "command": command,
            "args": args,
            "ports": [{"name": "http", "containerPort": spec.engine.port, "protocol": "TCP"}],
            "resources": {
                "requests": {"cpu": spec.engine.cpu, "memory": spec.engine.memory, GPU_RESOURCE: str(gpus)},
                "limits": {GPU_RESOURCE: str(gpus)},
            },
            "env": [
                {"name": "EBBTIDE_SERVICE", "value": owner.name},
                {"name": "EBBTIDE_REPLICA", "value": str(replica)},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                # The packer annotates the GPU product of the node it binds to; env from the downward API is
                # resolved at container start, after binding (the simulated engine's `--gpu auto` reads it).
                {
                    "name": "EBBTIDE_GPU_PRODUCT",
                    "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{L.GPU_PRODUCT}']"}},
                },
            ],
        }
        if lora_enabled(spec):
            # vLLM serves /v1/load_lora_adapter and /v1/unload_lora_adapter only with this set.
            container["env"].append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
        if entry or role.role == "decode":
            container["readinessProbe"] = {
                "httpGet": {"path": "/health", "port": "http"},
                "periodSeconds": 5,
                "failureThreshold": 3,
            }
            container["startupProbe"] = {
                "httpGet": {"path": "/health", "port": "http"},
                "periodSeconds": 10,
                "failureThreshold": 180,  # weights of large models take minutes to load
            }
        pod_spec: dict[str, Any] = {
            "schedulerName": scheduler_name,
            "restartPolicy": "Always",
            "hostname": pod_name(owner.name, replica, role),
            "subdomain": f"{owner.name}-pods",
            # Deleting the pod is the drain: the engine's shutdown timeout, then its teardown (drain.py).
            "terminationGracePeriodSeconds": termination_grace_s(spec.drain_grace_period_seconds),
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [container],
        }
        pods.append(
            gpu_pod(
                owner,
                pod_name(owner.name, replica, role),
                pod_labels,
                len(roles),
                pod_spec,
                spec.priority_class_name,
                spec.gpu.types,
                annotations,
            )
        )
    return pods


def joiner_pods(
    owner: Owner,
    spec: LLMServiceSpec,
    replica: int,
    op_id: str,
    ranks: range,
    gpus: int,
    scheduler_name: str,
) -> list[dict[str, Any]]:
    """The rank pods that join replica `replica` in an in-place width change: one gang per operation, so the
    packer places them all or none. No entrypoint label: they take no client traffic.

    vLLM places its new data-parallel ranks on the Ray cluster its entry pod heads, so a joiner is a Ray worker
    of that pod. The simulated engine models the resize inside the resizing instance; its joiner runs an
    engine process of the rank's GPUs that only holds them and answers /health.
    """
    base = replica_pods(owner, spec, replica, scheduler_name)[0]
    leader = f"{base['metadata']['name']}.{owner.name}-pods.{owner.namespace}.svc"
    out = []
    for rank in ranks:
        name = f"{owner.name}-r{replica}-ep-{rank}"
        container = copy.deepcopy(base["spec"]["containers"][0])
        if spec.engine.type == "simulated":
            args = [a for a in container["args"] if a not in ("--enable-eplb", "--enable-elastic-ep")]
            if "--elastic-ep-max-dp-size" in args:
                del args[args.index("--elastic-ep-max-dp-size") : args.index("--elastic-ep-max-dp-size") + 2]
            args[args.index("--tensor-parallel") + 1] = str(gpus)
            args[args.index("--expert-parallel") + 1] = "1"
            container["args"] = args
        else:
            container["command"], container["args"] = ["/bin/sh", "-c"], [f"ray start --address={leader}:6379 --block"]
            container.pop("readinessProbe", None)
            container.pop("startupProbe", None)
        container["resources"]["requests"][GPU_RESOURCE] = str(gpus)
        container["resources"]["limits"][GPU_RESOURCE] = str(gpus)
        pod_labels = {
            **base["metadata"]["labels"],
            L.ROLE: L.EP_RANK_ROLE,
            L.RANK: str(rank),
            L.GANG: f"{owner.name}-r{replica}-{op_id}",
        }
        pod_labels.pop(L.ENTRYPOINT, None)
        pod_spec = {**base["spec"], "hostname": name, "containers": [container]}
        for key in ("priorityClassName", "affinity"):
            pod_spec.pop(key, None)
        out.append(gpu_pod(owner, name, pod_labels, len(ranks), pod_spec, spec.priority_class_name, spec.gpu.types, {}))
    return out


def gpu_pod(
    owner: Owner,
    name: str,
    pod_labels: dict[str, str],
    gang_size: int,
    pod_spec: dict[str, Any],
    priority_class: str | None,
    gpu_types: list[str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod of a gang: owner reference, gang size, PriorityClass and GPU product affinity on top of `pod_spec`."""
    pod_spec = dict(pod_spec)
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    affinity = gpu_affinity(gpu_types)
    if affinity:
        pod_spec["affinity"] = affinity
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": pod_labels,
            "annotations": {L.GANG_SIZE: str(gang_size), **(annotations or {})},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": pod_spec,
    }


def service_manifests(owner: Owner, spec: LLMServiceSpec) -> list[dict[str, Any]]:
    """The client-facing Service and the headless Service that gives gang pods DNS names."""
    ref = [owner_reference(owner)]
    meta_labels = {L.SERVICE: owner.name, L.MANAGED_BY: L.OPERATOR}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": owner.name,
                "namespace": owner.namespace,
                "labels": meta_labels,
                "ownerReferences": ref,
            },
            "spec": {
                "selector": {L.SERVICE: owner.name, L.ENTRYPOINT: "true"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": f"{owner.name}-pods",
                "namespace": owner.namespace,
                "labels": meta_labels,
                "ownerReferences": ref,
            },
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {L.SERVICE: owner.name},
                "ports": [{"name": "http", "port": spec.engine.port, "targetPort": "http"}],
            },
        },
    ]


def pdb_manifest(owner: Owner, spec: LLMServiceSpec) -> dict[str, Any]:
    """Voluntary evictions may not take the service below minReplicas whole gangs."""
    pods_per_replica = len(pod_roles(spec))
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": {L.SERVICE: owner.name, L.MANAGED_BY: L.OPERATOR},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "minAvailable": spec.scaling.min_replicas * pods_per_replica,
            "selector": {"matchLabels": {L.SERVICE: owner.name}},
        },
    }
