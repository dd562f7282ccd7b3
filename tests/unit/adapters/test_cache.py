"""The watch-fed cache: a relist replaces the store (no ghosts after a watch gap), indices follow each change,
and the list-and-watch loop resumes from the last resourceVersion and lists again when it expires."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from adapters.cache import Informer, key_of
from adapters.kube import covers

Obj = dict[str, Any]


def pod(name: str, rv: str = "1", node: str = "", service: str = "", ns: str = "ns") -> Obj:
    labels = {"ebbtide.dev/service": service} if service else {}
    return {
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels,
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {"nodeName": node, "schedulerName": "ebbtide-packer"},
    }  # fmt: skip


def by_service(obj: Obj) -> list[str]:
    value = (obj["metadata"].get("labels") or {}).get("ebbtide.dev/service")
    return [value] if value else []


def unbound(obj: Obj) -> list[str]:
    return [] if obj["spec"].get("nodeName") else ["pending"]


def informer() -> tuple[Informer, list[tuple[str, str]]]:
    inf = Informer("pods", lambda *a, **k: None, indices={"service": by_service, "unbound": unbound})
    seen: list[tuple[str, str]] = []
    inf.listen(lambda type_, old, new: seen.append((type_, key_of(new or old or {}))))
    return inf, seen


def test_a_relist_drops_objects_deleted_during_a_watch_gap_and_reports_them() -> None:
    inf, seen = informer()
    inf.replace([pod("a"), pod("b")])
    seen.clear()

    inf.replace([pod("b"), pod("c")])

    assert sorted(key_of(p) for p in inf.items()) == ["ns/b", "ns/c"]
    assert sorted(seen) == [("ADDED", "ns/c"), ("DELETED", "ns/a")], "unchanged b is not reported again"
    assert inf.by_index("unbound", "pending") == [inf.get("ns/b"), inf.get("ns/c")]


def test_indices_follow_every_change_and_stored_objects_lose_managed_fields() -> None:
    inf, _ = informer()
    inf.replace([pod("a", service="svc")])
    assert [p["metadata"]["name"] for p in inf.by_index("unbound", "pending")] == ["a"]

    inf.apply("MODIFIED", pod("a", rv="2", node="gpu-0", service="svc"))
    assert inf.by_index("unbound", "pending") == []
    assert [p["spec"]["nodeName"] for p in inf.by_index("service", "svc")] == ["gpu-0"]
    assert "managedFields" not in inf.get("ns/a")["metadata"]  # type: ignore[index]

    inf.apply("DELETED", pod("a", rv="3", node="gpu-0", service="svc"))
    assert inf.by_index("service", "svc") == [] and len(inf) == 0


def test_covers_ignores_what_the_server_defaults_but_not_what_differs() -> None:
    wanted = {"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": "http"}]}
    served = {"selector": {"app": "x"}, "clusterIP": "10.0.0.1",
              "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}  # fmt: skip
    assert covers(served, wanted)
    assert not covers({**served, "ports": [{"port": 8080, "targetPort": "http"}]}, wanted)
    assert not covers({**served, "ports": [*served["ports"], {"port": 81}]}, wanted)
    assert not covers(None, wanted)


class ScriptedApi:
    """Answers an informer's list and watch calls from a script, the way the API server would."""

    def __init__(self, lists: list[tuple[str, list[Obj]]], watches: list[list[Obj]]) -> None:
        self.lists, self.watches = lists, watches
        self.watched_from: list[str] = []
        self.done = threading.Event()

    def __call__(self, *args: Any, watch: bool = False, resource_version: str = "", **kwargs: Any) -> Any:
        assert kwargs["_preload_content"] is False
        if not watch:
            version, items = self.lists.pop(0)
            return Listed(json.dumps({"metadata": {"resourceVersion": version}, "items": items}).encode())
        self.watched_from.append(resource_version)
        if not self.watches:
            self.done.set()
            time.sleep(0.05)  # an idle watch that the server ends
            return Stream([])
        return Stream(self.watches.pop(0))


class Listed:
    def __init__(self, data: bytes) -> None:
        self.data = data


class Stream:
    def __init__(self, events: list[Obj]) -> None:
        self.events = events

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        for e in self.events:
            yield (json.dumps(e) + "\n").encode()

    def release_conn(self) -> None:
        pass


async def test_the_watch_resumes_from_the_last_version_and_lists_again_when_it_expires() -> None:
    api = ScriptedApi(
        lists=[("10", [pod("a", "5"), pod("b", "6")]), ("20", [pod("b", "6"), pod("d", "19")])],
        watches=[
            [
                {"type": "ADDED", "object": pod("c", "11")},
                {"type": "DELETED", "object": pod("a", "12")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "13"}}},
            ],
            [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}],
        ],
    )
    inf = Informer("pods", api)
    deleted: list[str] = []
    inf.listen(lambda type_, old, new: deleted.append(key_of(old)) if type_ == "DELETED" and old else None)
    inf.start(asyncio.get_running_loop())
    try:
        await asyncio.wait_for(inf.synced.wait(), 5)
        await asyncio.wait_for(asyncio.to_thread(api.done.wait), 5)
        await asyncio.sleep(0.05)  # let the loop apply what the thread posted
    finally:
        inf.stop()

    assert sorted(key_of(p) for p in inf.items()) == ["ns/b", "ns/d"]
    assert deleted == ["ns/a", "ns/c"], "c, added then gone during the gap, is dropped by the relist"
    assert api.watched_from[:3] == ["10", "13", "20"], "resume from the bookmark; after 410, from the new list"
    assert inf.relists == 2


def test_cached_pods_and_nodes_keep_what_the_operator_reads_and_drop_the_bulk() -> None:
    from adapters.cache import trim_node, trim_pod
    from controllers.planners.packing import pod_request

    container = {
        "name": "engine",
        "image": "vllm/vllm-openai:v0.32.0",
        "args": ["--model", "m"] * 50,
        "env": [{"name": f"E{i}", "value": "x" * 100} for i in range(50)],
        "resources": {"limits": {"nvidia.com/gpu": "2", "cpu": "4", "memory": "16Gi"}},
    }
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "annotations": {"a": "b"}},
        "spec": {
            "nodeName": "n1",
            "schedulerName": "ebbtide-packer",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "containers": [container],
            "volumes": [{"name": "cache", "emptyDir": {}}],
        },
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }
    slim = trim_pod(pod)
    assert pod_request(slim) == pod_request(pod), "the packer reads the same request"
    assert slim["spec"]["containers"] == [{"name": "engine", "resources": container["resources"]}]
    assert "volumes" not in slim["spec"] and slim["spec"]["tolerations"] == pod["spec"]["tolerations"]
    assert slim["status"] == pod["status"] and slim["metadata"] == pod["metadata"]
    assert pod["spec"]["containers"][0]["env"], "the watched object itself is not changed"

    node = {
        "metadata": {"name": "n1", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
        "spec": {"taints": []},
        "status": {
            "allocatable": {"nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
            "images": [{"names": ["x"], "sizeBytes": 1}],
            "nodeInfo": {"kubeletVersion": "v1.33"},
        },
    }
    slim_node = trim_node(node)
    assert set(slim_node["status"]) == {"allocatable", "conditions"}
    assert slim_node["metadata"] == node["metadata"] and slim_node["spec"] == node["spec"]
