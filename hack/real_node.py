#!/usr/bin/env python3
"""A real node beside the KWOK GPU nodes: Debian's containerd + runc + CNI plugins, a kubelet and kube-proxy built
at the control plane's version, images built locally without a registry (docs/install.md, "A real node").

`python hack/real_node.py up [--dir DIR]` starts the local control plane in DIR with the API server reachable from
pods (hack/cluster.py --real-node) and joins the node `ebbtide-real-node` to it; `down` stops both and restores the
host; `status` says what runs; `images` only builds and imports the images. Needs root. One real node per host (it
owns 10.250.0.1 on lo, the kubelet's ports and kube-proxy's iptables chains). Standard library only, like cluster.py.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import cluster  # noqa: E402  (hack/ is not a package)

# The control-plane build's cache (hack/build-control-plane.sh): binaries, the Debian rootfs, containerd's store.
CACHE = Path(
    os.environ.get("EBBTIDE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "ebbtide"
)
NODE_HOME = CACHE / "real-node"
# Per-`up` state (sockets, kubelet root, configs, logs); containerd's content store stays, so images survive `down`.
RUN = NODE_HOME / "run"
CONTAINERD_ROOT = NODE_HOME / "containerd"
ROOTFS_CACHE = CACHE / "rootfs"
DEFAULT_DIR = ROOT / ".run" / "real-node-cluster"

NODE_NAME = "ebbtide-real-node"
NODE_IP = cluster.REAL_NODE_IP
POD_CIDR = "10.88.0.0/16"
BRIDGE = "ebbtide0"
CNI_NETWORK = "ebbtide-real-node"
# Other tests' pods must not land here: only pods tolerating this taint (the chart's operator, in the tier) do.
TAINT_KEY = "ebbtide.dev/real-node"
NODE_LABEL = "ebbtide.dev/real-node"
NS = "k8s.io"
PAUSE_IMAGE = "ebbtide.local/pause:1"
OPERATOR_REPO = "ebbtide.local/operator"
REDIS_IMAGE = "ebbtide.local/redis:7"
APT_PACKAGES = ["containerd", "runc", "containernetworking-plugins", "iptables", "debootstrap"]
# The kubelet rewrites the first three at start, kube-proxy and the bridge plugin may set the others: down restores.
SYSCTLS = ["vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops", "net.ipv4.ip_forward",
           "net.ipv4.conf.all.route_localnet", "net.bridge.bridge-nf-call-iptables"]
# Chains the kubelet creates for itself (kube-proxy's go with `kube-proxy --cleanup`).
KUBELET_CHAINS = [("mangle", "KUBE-IPTABLES-HINT"), ("mangle", "KUBE-KUBELET-CANARY"), ("nat", "KUBE-KUBELET-CANARY"),
                  ("filter", "KUBE-KUBELET-CANARY"), ("filter", "KUBE-FIREWALL")]
# The project files the operator image holds (operator/Dockerfile's list): its tag is their content hash.
IMAGE_SOURCES = ["pyproject.toml", "README.md", "crds", "catalogue", "autoscaler", "packer", "controllers", "adapters",
                 "operator"]
IMAGE_EXTRAS = "nodeagent"  # as operator/Dockerfile: the same image runs the node agent, which needs nvidia-ml-py
STARTED = time.monotonic()


def log(msg: str) -> None:
    print(f"[real-node {time.monotonic() - STARTED:6.1f}s] {msg}", file=sys.stderr, flush=True)


@contextmanager
def heartbeat(what: str, every: float = 30.0) -> Iterator[None]:
    """Print that `what` still runs every `every` seconds: debootstrap and go builds are silent for minutes."""
    done = threading.Event()
    t0 = time.monotonic()

    def beat() -> None:
        while not done.wait(every):
            log(f"still {what} ({time.monotonic() - t0:.0f}s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def run(*argv: str, check: bool = True, quiet: bool = False, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    out = subprocess.run(list(argv), text=True, capture_output=True, **kw)
    if check and out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-2000:]}")
    if not quiet and out.returncode != 0:
        log(f"{argv[0]} {argv[1] if len(argv) > 1 else ''}: {(out.stderr or out.stdout).strip()[-300:]}")
    return out


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with heartbeat(f"waiting for {what}"):
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


# --- host preparation ---------------------------------------------------------------------------------------------

def ensure_packages() -> None:
    def installed(package: str) -> bool:
        status = run("dpkg-query", "-W", "-f=${Status}", package, check=False, quiet=True).stdout
        return "install ok installed" in status

    missing = [p for p in APT_PACKAGES if not installed(p)]
    if not missing:
        log(f"packages present: {' '.join(APT_PACKAGES)}")
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with heartbeat("installing packages"):
        run("apt-get", "update", "-q", env=env)
        # Debian's postinst would start a containerd of its own where an init system runs; this one uses its own.
        run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing, env=env)


def node_binaries() -> Path:
    out = subprocess.run([str(HERE / "build-node.sh")], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def read_sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    return path.read_text().strip() if path.exists() else None


def prepare_host() -> None:
    """Record what `down` restores, then add the node IP to lo (no dummy links on this VM; nodeIP can't be loopback)."""
    saved = RUN / "host.json"
    if not saved.exists():
        addrs = run("ip", "-o", "addr", "show", "dev", "lo").stdout
        netns = sorted(os.listdir("/var/run/netns")) if Path("/var/run/netns").is_dir() else []
        saved.write_text(json.dumps({
            "sysctls": {n: read_sysctl(n) for n in SYSCTLS},
            "added_ip": f" {NODE_IP}/32 " not in addrs,
            "netns": netns,
        }))
    if f" {NODE_IP}/32 " not in run("ip", "-o", "addr", "show", "dev", "lo").stdout:
        run("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")
        log(f"added {NODE_IP}/32 to lo")


# --- containerd ---------------------------------------------------------------------------------------------------

def sock() -> Path:
    return RUN / "containerd.sock"


def ctr(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ctr", "--address", str(sock()), "--namespace", NS, *args, check=check)


def write_configs(cluster_dir: Path) -> None:
    (RUN / "cni").mkdir(parents=True, exist_ok=True)
    # Without a network config the node never goes Ready; bridge + host-local give every pod an address.
    (RUN / "cni" / "10-ebbtide.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(RUN / "cni-ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2))
    (RUN / "containerd.toml").write_text(f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{RUN / 'containerd-state'}"
[grpc]
  address = "{sock()}"
[ttrpc]
  address = "{RUN / 'containerd.sock.ttrpc'}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{RUN / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{RUN / 'cni'}"
""")
    meta = json.loads((cluster_dir / "ports.json").read_text())
    pki = cluster_dir / "pki"
    (RUN / "kubeconfig").write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {{server: "https://127.0.0.1:{meta['apiserver']}", certificate-authority: "{pki / 'ca.crt'}"}}
users:
- name: node
  user: {{client-certificate: "{pki / 'admin.crt'}", client-key: "{pki / 'admin.key'}"}}
contexts:
- name: local
  context: {{cluster: local, user: node}}
current-context: local
""")
    # A throwaway test node: the kubelet's own API allows anonymous access (no client certificates are issued to the
    # API server for it). failCgroupV1: this VM has cgroup v1. Eviction thresholds are loose: the disk is shared.
    (RUN / "kubelet.yaml").write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{sock()}",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": NODE_IP,
        "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "resolvConf": "/etc/resolv.conf",
        "staticPodPath": "",
        "maxPods": 30,
    }, indent=2))
    # iptables mode routes ClusterIPs; conntrack and route_localnet settings stay as the host has them.
    (RUN / "kube-proxy.yaml").write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(RUN / "kubeconfig")},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_CIDR,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"{NODE_IP}:10256",
        "metricsBindAddress": f"{NODE_IP}:10249",
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }, indent=2))


def start(name: str, argv: list[str]) -> None:
    logf = open(RUN / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    (RUN / f"{name}.pid").write_text(str(proc.pid))


def alive(name: str) -> bool:
    pid = RUN / f"{name}.pid"
    try:
        os.kill(int(pid.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def stop(name: str) -> None:
    pid_file = RUN / f"{name}.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text())
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            cluster.reap(pid)
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass
    pid_file.unlink(missing_ok=True)
    log(f"stopped {name}")


def start_containerd() -> None:
    if alive("containerd") and ctr("version", check=False).returncode == 0:
        return
    start("containerd", ["containerd", "--config", str(RUN / "containerd.toml")])
    wait_for("containerd", lambda: ctr("version", check=False).returncode == 0, 60)
    log("containerd up")


# --- images -------------------------------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def oci_archive(rootfs: Path, name: str, config: dict[str, object], out: Path) -> None:
    """`rootfs` as a one-layer image archive `ctr images import` reads (OCI layout plus a Docker manifest.json)."""
    work = out.with_suffix(".d")
    shutil.rmtree(work, ignore_errors=True)
    blobs = work / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer = work / "layer.tar"
    run("tar", "-C", str(rootfs), "--numeric-owner", "--exclude=./proc/*", "--exclude=./sys/*",
        "--exclude=./dev/*", "-cf", str(layer), ".")
    diff_id = sha256_file(layer)
    gz = work / "layer.tar.gz"
    with open(layer, "rb") as src, gzip.open(gz, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    layer.unlink()
    layer_digest = sha256_file(gz)
    gz.rename(blobs / layer_digest)

    def blob(obj: dict[str, object]) -> tuple[str, int]:
        data = json.dumps(obj, separators=(",", ":")).encode()
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return digest, len(data)

    cfg_digest, cfg_size = blob({"architecture": "amd64", "os": "linux", "config": config,
                                 "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}})
    man_digest, man_size = blob({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{cfg_digest}",
                   "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{layer_digest}",
                    "size": (blobs / layer_digest).stat().st_size}],
    })
    (work / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (work / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{man_digest}",
                       "size": man_size, "annotations": {"io.containerd.image.name": name,
                                                          "org.opencontainers.image.ref.name": name.split(":")[-1]}}],
    }))
    (work / "manifest.json").write_text(json.dumps([{"Config": f"blobs/sha256/{cfg_digest}", "RepoTags": [name],
                                                     "Layers": [f"blobs/sha256/{layer_digest}"]}]))
    with tarfile.open(out, "w") as tar:
        for p in sorted(work.iterdir()):
            tar.add(p, arcname=p.name)
    shutil.rmtree(work)


def have_image(name: str) -> bool:
    return any(line.split()[0] == name for line in ctr("images", "ls", "-q", check=False).stdout.splitlines() if line)


def import_image(rootfs: Path, name: str, config: dict[str, object]) -> None:
    archive = RUN / "images" / (name.replace("/", "_").replace(":", "_") + ".tar")
    archive.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with heartbeat(f"building image {name}"):
        oci_archive(rootfs, name, config, archive)
        ctr("images", "import", str(archive))
    archive.unlink()
    log(f"image {name} imported in {time.monotonic() - t0:.1f}s")


def pause_image(bins: Path) -> None:
    if have_image(PAUSE_IMAGE):
        return
    root = RUN / "rootfs-pause"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copy2(bins / "pause", root / "pause")
    import_image(root, PAUSE_IMAGE, {"Entrypoint": ["/pause"], "User": "65535:65535"})
    shutil.rmtree(root)


def base_rootfs() -> Path:
    """Debian bookworm minbase with python3, cached outside the work tree (debootstrap takes minutes)."""
    out = ROOTFS_CACHE / "bookworm-minbase-python3"
    if (out / ".complete").exists():
        return out
    # Built aside and renamed when complete, so an interrupted debootstrap never leaves a half rootfs in the cache.
    work = ROOTFS_CACHE / "bookworm-minbase-python3.partial"
    for stale in (work, out):
        for point in mounts_under(stale):
            run("umount", "-l", point, check=False, quiet=True)
        shutil.rmtree(stale, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    log("debootstrap bookworm minbase with python3 (about 2-3 minutes)")
    with heartbeat("running debootstrap"):
        run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
            str(work), "http://deb.debian.org/debian")
    run("chroot", str(work), "apt-get", "clean", cwd=work)
    (work / ".complete").write_text("")
    work.rename(out)
    return out


def operator_tag() -> str:
    files = run("git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", *IMAGE_SOURCES).stdout.split()
    h = hashlib.sha256(IMAGE_EXTRAS.encode())
    for f in sorted(files):
        p = ROOT / f
        if p.is_file():
            h.update(f.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def operator_image() -> str:
    """The project in a venv on the cached Debian rootfs; wheels built on the host (same Python minor), installed
    offline in a chroot. Tagged by the content hash of the files operator/Dockerfile copies."""
    name = f"{OPERATOR_REPO}:{operator_tag()}"
    if have_image(name):
        log(f"image {name} present")
        return name
    base = base_rootfs()
    root = RUN / "rootfs-operator"
    shutil.rmtree(root, ignore_errors=True)
    log("copying the base rootfs")
    run("cp", "-a", str(base), str(root))
    app = root / "app"
    app.mkdir()
    for src in IMAGE_SOURCES:
        s = ROOT / src
        if s.is_dir():
            shutil.copytree(s, app / src, ignore=shutil.ignore_patterns("__pycache__", "Dockerfile"))
        else:
            shutil.copy2(s, app / src)
    wheels = root / "wheels"
    log("building wheels of the project and its dependencies on the host")
    with heartbeat("building wheels"):
        venv_python = ROOT / ".venv" / "bin" / "python"
        python = str(venv_python) if venv_python.exists() else sys.executable
        run(python, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), f"{app}[{IMAGE_EXTRAS}]")
    # The image's Python (Debian's 3.11.2) may need a dependency the host's did not (environment markers), so the
    # index stays reachable for what the host's wheels lack.
    # The host's resolver and CA bundle (an intercepting proxy's CA may be in it) for that, removed afterwards; a
    # clean environment so the host's PIP_* settings (paths outside the chroot) stay out.
    shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
    bundle = Path(os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        shutil.copy2(bundle, root / "build-ca.crt")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           **({"PIP_CERT": "/build-ca.crt"} if bundle.is_file() else {})}
    with heartbeat("installing into the image's venv"):
        run("chroot", str(root), "python3", "-m", "venv", "/opt/venv", cwd=root, env=env)
        run("chroot", str(root), "/opt/venv/bin/pip", "install", "-q", "--find-links", "/wheels", "--no-cache-dir",
            "--disable-pip-version-check", f"ebbtide[{IMAGE_EXTRAS}]", cwd=root, env=env)
    shutil.rmtree(wheels)
    for temp in (root / "etc" / "resolv.conf", root / "build-ca.crt"):
        temp.unlink(missing_ok=True)
    with open(root / "etc" / "passwd", "a") as f:
        f.write("ebbtide:x:65532:65532::/nonexistent:/usr/sbin/nologin\n")
    import_image(root, name, {
        "Entrypoint": ["/opt/venv/bin/python", "/app/operator/main.py"], "User": "65532:65532", "WorkingDir": "/app",
        "Env": ["PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
        "ExposedPorts": {"8080/tcp": {}, "8081/tcp": {}},
    })
    shutil.rmtree(root)
    return name


def redis_image() -> str:
    """Debian's redis-server and redis-cli with the shared libraries they load, user redis (999) as the chart runs."""
    if have_image(REDIS_IMAGE):
        return REDIS_IMAGE
    if not Path("/usr/bin/redis-server").exists():
        run(str(HERE / "ensure-redis.sh"))
    root = RUN / "rootfs-redis"
    shutil.rmtree(root, ignore_errors=True)
    files = {"/usr/bin/redis-server", "/usr/bin/redis-cli", "/usr/bin/redis-check-rdb"}
    for binary in ("/usr/bin/redis-server", "/usr/bin/redis-cli"):
        for line in run("ldd", binary).stdout.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 3 else parts[0]
            if path.startswith("/"):
                files.add(path)
    for f in sorted(files):
        real = Path(f).resolve()
        for p in {Path(f), real}:
            dst = root / str(p).lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                shutil.copy2(real, dst)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/false\nredis:x:999:999::/data:/bin/false\n")
    (root / "etc" / "group").write_text("root:x:0:\nredis:x:999:\n")
    (root / "data").mkdir()
    (root / "tmp").mkdir(mode=0o1777)
    import_image(root, REDIS_IMAGE, {"Entrypoint": ["/usr/bin/redis-server"], "User": "999:999",
                                     "Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/data"})
    shutil.rmtree(root)
    return REDIS_IMAGE


def images(bins: Path) -> dict[str, str]:
    pause_image(bins)
    return {"operator": operator_image(), "redis": redis_image(), "pause": PAUSE_IMAGE}


# --- node ---------------------------------------------------------------------------------------------------------

def kubectl(cluster_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(str(cluster.binaries() / "kubectl"), "--kubeconfig", str(cluster_dir / "kubeconfig"), *args,
               check=check, quiet=not check)


def node_ready(cluster_dir: Path) -> bool:
    out = kubectl(cluster_dir, "get", "node", NODE_NAME, "-o",
                  "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
    return out.returncode == 0 and out.stdout.strip() == "True"


def up(cluster_dir: Path, nodes: int) -> dict[str, object]:
    """Everything from a bare host to the node Ready with images imported; idempotent."""
    if os.geteuid() != 0:
        raise SystemExit("a real node needs root (containerd, the kubelet, iptables)")
    t0 = time.monotonic()
    RUN.mkdir(parents=True, exist_ok=True)
    marker = RUN / "cluster-dir"
    if marker.exists() and marker.read_text() != str(cluster_dir):
        raise SystemExit(f"the real node is joined to {marker.read_text()}: `hack/real_node.py down` first")
    marker.write_text(str(cluster_dir))
    ensure_packages()
    log("kubelet, kube-proxy and pause binaries")
    with heartbeat("building kubelet and kube-proxy"):
        bins = node_binaries()
    prepare_host()
    kubeconfig = cluster.up(cluster_dir, nodes, real_node=True)
    write_configs(cluster_dir)
    start_containerd()
    imgs = images(bins)
    if not alive("kubelet"):
        start("kubelet", [str(bins / "kubelet"), f"--config={RUN / 'kubelet.yaml'}",
                          f"--kubeconfig={RUN / 'kubeconfig'}", f"--root-dir={RUN / 'kubelet'}",
                          f"--cert-dir={RUN / 'kubelet-pki'}", f"--node-ip={NODE_IP}",
                          f"--hostname-override={NODE_NAME}", f"--node-labels={NODE_LABEL}=true", "--v=1"])
        log("kubelet started")
    if not alive("kube-proxy"):
        start("kube-proxy", [str(bins / "kube-proxy"), f"--config={RUN / 'kube-proxy.yaml'}", "--v=1"])
        log("kube-proxy started")
    wait_for(f"node {NODE_NAME} Ready", lambda: node_ready(cluster_dir), 120)
    took = time.monotonic() - t0
    log(f"node {NODE_NAME} Ready beside the KWOK nodes in {took:.0f}s; KUBECONFIG={kubeconfig}")
    info: dict[str, object] = {"kubeconfig": str(kubeconfig), "node": NODE_NAME, "taint": TAINT_KEY,
                               "images": imgs, "seconds": round(took, 1)}
    (RUN / "info.json").write_text(json.dumps(info))
    return info


def running_tasks() -> list[str]:
    """Containers (pods' sandboxes included) whose process still runs; stopped ones stay listed until removed."""
    rows = ctr("tasks", "ls", check=False).stdout.splitlines()[1:]
    return [r.split()[0] for r in rows if r.split() and r.split()[-1] == "RUNNING"]


def our_processes() -> list[int]:
    """Container shims of our containerd (they outlive it): matched by its socket path, unique to this node."""
    pids = []
    needle = str(sock()).encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmd and needle in cmd:
            pids.append(int(d.name))
    return pids


def mounts_under(*prefixes: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(p) or point.startswith(str(p) + "/") for p in prefixes):
            points.append(point)
    return sorted(set(points), key=len, reverse=True)


def iptables_cleanup() -> None:
    """The kubelet's chains and the bridge plugin's masquerade chains of our network; nothing else is touched."""
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table, chain in KUBELET_CHAINS:
            rules = run(f"{tool}-save", "-t", table, check=False, quiet=True).stdout
            for line in rules.splitlines():
                if line.startswith("-A ") and f"-j {chain}" in line:
                    run(tool, "-t", table, "-D", *shlex.split(line)[1:], check=False, quiet=True)
            if f":{chain} " in rules:
                run(tool, "-t", table, "-F", chain, check=False, quiet=True)
                run(tool, "-t", table, "-X", chain, check=False, quiet=True)
        nat = run(f"{tool}-save", "-t", "nat", check=False, quiet=True).stdout
        ours = {line.split()[-1] for line in nat.splitlines()
                if line.startswith("-A POSTROUTING") and CNI_NETWORK in line and "-j CNI-" in line}
        for line in nat.splitlines():
            if line.startswith("-A POSTROUTING") and any(f"-j {c}" in line for c in ours):
                run(tool, "-t", "nat", "-D", *shlex.split(line)[1:], check=False, quiet=True)
        for c in ours:
            run(tool, "-t", "nat", "-F", c, check=False, quiet=True)
            run(tool, "-t", "nat", "-X", c, check=False, quiet=True)


def down(cluster_dir: Path | None) -> None:
    """Stop the node's processes and restore the host, then stop the control plane it joined."""
    t0 = time.monotonic()
    marker = RUN / "cluster-dir"
    joined = Path(marker.read_text()) if marker.exists() else cluster_dir
    if joined is not None and (joined / "ports.json").exists() and node_ready(joined):
        # The kubelet stops pods whose objects are gone, tearing down their networks through CNI; cordoned first so
        # their controllers' replacements stay Pending instead of starting sandboxes that are then killed unclean.
        kubectl(joined, "cordon", NODE_NAME, check=False)
        kubectl(joined, "delete", "pods", "--all-namespaces", "--field-selector", f"spec.nodeName={NODE_NAME}",
                "--force", "--grace-period=0", "--wait=false", check=False)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and alive("containerd"):
            if not running_tasks():
                break
            time.sleep(1)
        kubectl(joined, "delete", "node", NODE_NAME, "--wait=false", check=False)
    stop("kube-proxy")
    stop("kubelet")
    bins = CACHE / "bin"
    proxies = sorted(bins.glob("node-k8s-*/kube-proxy"))
    if proxies and (RUN / "kube-proxy.yaml").exists():
        run(str(proxies[-1]), "--cleanup", f"--config={RUN / 'kube-proxy.yaml'}", check=False, quiet=True)
    if alive("containerd"):
        left = running_tasks()
        if left:
            log(f"killing {len(left)} containers the kubelet did not stop (their pod networks are removed below)")
        for task in left:
            ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
    stop("containerd")
    for pid in our_processes():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.5)
    host = json.loads((RUN / "host.json").read_text()) if (RUN / "host.json").exists() else {}
    netns_dir = Path("/var/run/netns")
    if netns_dir.is_dir() and "netns" in host:
        for ns in sorted(set(os.listdir(netns_dir)) - set(host["netns"])):
            if ns.startswith("cni-"):
                run("umount", str(netns_dir / ns), check=False, quiet=True)
                (netns_dir / ns).unlink(missing_ok=True)
    for point in mounts_under(RUN, CONTAINERD_ROOT):
        run("umount", "-l", point, check=False, quiet=True)
    # The kubelet's pod cgroups (cgroupfs driver), deepest first; only empty ones can go.
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        kubepods = hierarchy / "kubepods"
        if kubepods.is_dir():
            dirs = sorted((p for p in kubepods.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for d in [*dirs, kubepods]:
                try:
                    d.rmdir()
                except OSError:
                    pass
    iptables_cleanup()
    if run("ip", "link", "show", BRIDGE, check=False, quiet=True).returncode == 0:
        run("ip", "link", "del", BRIDGE, check=False)
    if host.get("added_ip", False):
        run("ip", "addr", "del", f"{NODE_IP}/32", "dev", "lo", check=False, quiet=True)
    for name, value in host.get("sysctls", {}).items():
        if value is not None and read_sysctl(name) not in (None, value):
            Path("/proc/sys", name.replace(".", "/")).write_text(value)
    if joined is not None:
        cluster.down(joined, quiet=True)
    shutil.rmtree(RUN, ignore_errors=True)
    log(f"down in {time.monotonic() - t0:.1f}s; host restored")


def status() -> dict[str, object]:
    return {"running": {n: alive(n) for n in ("containerd", "kubelet", "kube-proxy")},
            "cluster_dir": (RUN / "cluster-dir").read_text() if (RUN / "cluster-dir").exists() else None,
            "node_ip_on_lo": f" {NODE_IP}/32 " in run("ip", "-o", "addr", "show", "dev", "lo").stdout,
            "leftover_mounts": mounts_under(RUN, CONTAINERD_ROOT), "shims": our_processes()}


@contextmanager
def exclusive() -> Iterator[None]:
    """One `up`, `down` or image build at a time on this host: they share the node IP, the ports and the caches."""
    NODE_HOME.mkdir(parents=True, exist_ok=True)
    with open(NODE_HOME / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another real-node command runs on this host; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "images"])
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("EBBTIDE_REAL_NODE_CLUSTER_DIR", DEFAULT_DIR)))
    parser.add_argument("--nodes", type=int, default=int(os.environ.get("EBBTIDE_NODES", "8")))
    args = parser.parse_args()
    if args.action == "status":
        print(json.dumps(status(), indent=2))
        return
    with exclusive():
        act(args)


def act(args: argparse.Namespace) -> None:
    if args.action == "up":
        print(json.dumps(up(args.dir.resolve(), args.nodes)))
    elif args.action == "down":
        down(args.dir.resolve())
    elif args.action == "images":
        RUN.mkdir(parents=True, exist_ok=True)
        write_configs_needed = not (RUN / "containerd.toml").exists()
        if write_configs_needed:
            raise SystemExit("the node is not up: run `hack/real_node.py up` (images are built there)")
        start_containerd()
        print(json.dumps(images(node_binaries())))


if __name__ == "__main__":
    main()
