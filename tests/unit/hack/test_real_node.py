"""hack/real_node.py's pure parts: the image archive `ctr images import` reads and the node's configuration (the
settings this VM needs, each found by its exact error; docs/install.md, "A real node")."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.kube import ROOT


@pytest.fixture(scope="module")
def rn() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ebbtide_real_node_unit", ROOT / "hack" / "real_node.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_image_archive_is_an_oci_layout_whose_digests_and_name_match(rn: ModuleType, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    out = tmp_path / "image.tar"
    rn.oci_archive(rootfs, "ebbtide.local/hello:1", {"Entrypoint": ["/bin/hello"]}, out)

    with tarfile.open(out) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    index = json.loads(files["index.json"])
    entry = index["manifests"][0]
    assert entry["annotations"]["io.containerd.image.name"] == "ebbtide.local/hello:1"

    def blob(digest: str) -> bytes:
        data = files["blobs/sha256/" + digest.removeprefix("sha256:")]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    manifest = json.loads(blob(entry["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    layer = gzip.decompress(blob(manifest["layers"][0]["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/bin/hello"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as fs:
        assert fs.extractfile("./bin/hello").read().startswith(b"#!/bin/sh")  # type: ignore[union-attr]
    docker = json.loads(files["manifest.json"])
    assert docker[0]["RepoTags"] == ["ebbtide.local/hello:1"]


def test_node_configuration_carries_every_setting_this_vm_needs(
    rn: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rn, "RUN", tmp_path / "run")
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "ports.json").write_text(json.dumps({"apiserver": 6443, "real_node": True}))
    rn.write_configs(cluster)
    run = tmp_path / "run"

    containerd = (run / "containerd.toml").read_text()
    assert "restrict_oom_score_adj = true" in containerd  # else: can't get final child's PID from pipe
    assert f'sandbox_image = "{rn.PAUSE_IMAGE}"' in containerd  # nothing is ever pulled
    conflist = json.loads((run / "cni" / "10-ebbtide.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "portmap"]  # else the node never goes Ready
    assert conflist["plugins"][0]["ipam"]["ranges"] == [[{"subnet": rn.POD_CIDR}]]

    kubelet = json.loads((run / "kubelet.yaml").read_text())
    assert kubelet["failCgroupV1"] is False  # this VM runs cgroup v1
    assert kubelet["address"] == rn.NODE_IP != "127.0.0.1"  # nodeIP can't be loopback
    assert kubelet["registerWithTaints"] == [{"key": rn.TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    proxy = json.loads((run / "kube-proxy.yaml").read_text())
    assert proxy["mode"] == "iptables" and proxy["conntrack"]["maxPerCore"] == 0
    assert "server: \"https://127.0.0.1:6443\"" in (run / "kubeconfig").read_text()


def test_stopping_processes_started_by_this_process_does_not_wait_out_their_grace(
    rn: ModuleType, tmp_path: Path
) -> None:
    # The tier starts the control plane and the node from pytest itself: an exited child stays a zombie, answers
    # kill(pid, 0), and each stop used to wait its whole grace period (about 60 s per tear-down).
    import subprocess
    import time

    children = {name: subprocess.Popen(["sleep", "60"], start_new_session=True) for name in ("etcd", "kwok")}
    for name, child in children.items():
        (tmp_path / f"{name}.pid").write_text(str(child.pid))
    t0 = time.monotonic()
    rn.cluster.down(tmp_path, quiet=True)
    assert time.monotonic() - t0 < 3
    assert all(child.poll() is not None for child in children.values())
