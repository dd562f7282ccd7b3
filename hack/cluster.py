#!/usr/bin/env python3
"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on 127.0.0.1.

`python hack/cluster.py up [--nodes N] [--dir DIR]` starts it (idempotent) and prints the kubeconfig path;
`python hack/cluster.py down` stops it. With `--real-engines`, kwok leaves pods of `engine: vllm` to the fleet too,
which runs a real vLLM for them (simulator/fleet/real.py). With `--real-node`, the API server is also reachable from
real pods (hack/real_node.py joins a kubelet to it). Fake GPU nodes carry GPU feature discovery labels and
rack/zone topology. Standard library only, so it runs before the project's venv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DIR = ROOT / ".run" / "cluster"
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
# The real node's address (on lo: this VM has no dummy links) and the `kubernetes` Service's ClusterIP; the serving
# certificate names both, and the in-cluster names, so pods reach the API server through 10.96.0.1.
REAL_NODE_IP = "10.250.0.1"
SERVING_SANS = ("IP:127.0.0.1,DNS:localhost,IP:10.250.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,"
                "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")

# Node pools of the default cluster: (count, product, GPU memory MiB). Racks of 4 nodes, 2 racks a zone.
GPU_POOLS = [
    (4, "NVIDIA-H100-80GB-HBM3", 81559),
    (2, "NVIDIA-A100-SXM4-80GB", 81920),
    (2, "NVIDIA-L4", 23034),
]


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: every socket stays bound until all are chosen, since the kernel may hand a port
    that was just closed out again (etcd and the API server once got the same one)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def binaries() -> Path:
    out = subprocess.run([str(HERE / "build-control-plane.sh")], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_pki(pki: Path) -> None:
    """A CA, an admin client certificate (system:masters) and a service-account key pair."""
    ext = pki / "serving.ext"
    if (pki / "admin.crt").exists() and ext.exists() and ext.read_text() == f"subjectAltName={SERVING_SANS}\n":
        return
    pki.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=ebbtide-local-ca",
            "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=system:masters/CN=ebbtide-admin",
            "-keyout", str(pki / "admin.key"), "-out", str(pki / "admin.csr"))
    openssl("x509", "-req", "-in", str(pki / "admin.csr"), "-CA", str(pki / "ca.crt"), "-CAkey",
            str(pki / "ca.key"), "-CAcreateserial", "-days", "3650", "-out", str(pki / "admin.crt"))
    (pki / "serving.ext").write_text(f"subjectAltName={SERVING_SANS}\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
            "-keyout", str(pki / "apiserver.key"), "-out", str(pki / "apiserver.csr"))
    openssl("x509", "-req", "-in", str(pki / "apiserver.csr"), "-CA", str(pki / "ca.crt"), "-CAkey",
            str(pki / "ca.key"), "-CAcreateserial", "-days", "3650", "-extfile", str(pki / "serving.ext"),
            "-out", str(pki / "apiserver.crt"))
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def kubeconfig(state: Path, port: int) -> Path:
    pki = state / "pki"
    path = state / "kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: ebbtide-local
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {pki / "ca.crt"}
users:
- name: admin
  user:
    client-certificate: {pki / "admin.crt"}
    client-key: {pki / "admin.key"}
contexts:
- name: ebbtide-local
  context: {{cluster: ebbtide-local, user: admin}}
current-context: ebbtide-local
"""
    )
    return path


def start(state: Path, name: str, argv: list[str]) -> None:
    logf = open(state / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    (state / f"{name}.pid").write_text(str(proc.pid))


def alive(state: Path, name: str) -> bool:
    pid_file = state / f"{name}.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def api_get(state: Path, path: str) -> tuple[int, bytes]:
    meta = json.loads((state / "ports.json").read_text())
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(state / "pki" / "admin.crt"), str(state / "pki" / "admin.key"))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{meta['apiserver']}{path}", context=ctx, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_for(what: str, check, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def kubectl(bins: Path, state: Path, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run([str(bins / "kubectl"), "--kubeconfig", str(state / "kubeconfig"), *args],
                         input=stdin, check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout


def node_manifests(pools: list[tuple[int, str, int]]) -> str:
    """Fake GPU nodes: KWOK-managed, GPU feature discovery labels, 4 nodes a rack, 2 racks a zone."""
    items = []
    i = 0
    for count, product, mem in pools:
        short = product.split("-")[1].lower()
        for _ in range(count):
            rack, zone = i // 4, i // 8
            name = f"gpu-{short}-{i}"
            items.append({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                    "labels": {
                        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                        "type": "kwok", "kwok.x-k8s.io/node": "fake",
                        "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": product,
                        "nvidia.com/gpu.count": "8", "nvidia.com/gpu.memory": str(mem),
                        "topology.kubernetes.io/zone": f"zone-{zone}", "ebbtide.dev/rack": f"rack-{rack}",
                    },
                },
                "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
                "status": {
                    "allocatable": {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8"},
                    "capacity": {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8"},
                },
            })
            i += 1
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def kwok_stages(state: Path, real_engines: bool) -> Path:
    """kwok's stage config: hack/kwok-stages.yaml, whose pod-ready stage skips simulated-engine pods, or with
    `real_engines` a copy of it in `state` that skips `engine: vllm` and `engine: peft` (the real trainer's) pods
    as well."""
    stages = HERE / "kwok-stages.yaml"
    if not real_engines:
        return stages
    text = stages.read_text()
    left_to_fleet = "      - 'simulated'\n"
    if text.count(left_to_fleet) != 1:
        raise SystemExit(f"{stages.name}: expected one pod-ready exclusion of 'simulated'")
    out = state / "kwok-stages.yaml"
    out.write_text(text.replace(left_to_fleet, left_to_fleet + "      - 'vllm'\n      - 'peft'\n"))
    return out


def up(state: Path, nodes: int, real_engines: bool = False, real_node: bool = False) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    running = all(alive(state, c) for c in COMPONENTS) and api_get(state, "/readyz")[0] == 200
    if running and json.loads((state / "ports.json").read_text()).get("real_node", False) == real_node:
        bins = binaries()
        kubectl(bins, state, "apply", "-f", "-", stdin=node_manifests(_pools(nodes)))
        wait_for("nodes Ready", lambda: _nodes_ready(bins, state, nodes))
        log(f"already running; KUBECONFIG={state / 'kubeconfig'}")
        return state / "kubeconfig"
    down(state, quiet=True)
    t0 = time.monotonic()
    bins = binaries()
    make_pki(state / "pki")
    *chosen, cm_port, scheduler_port, kwok_port = free_ports(6)
    ports = dict(zip(("etcd", "etcd_peer", "apiserver"), chosen, strict=True))
    (state / "ports.json").write_text(json.dumps({**ports, "real_node": real_node}))
    kcfg = kubeconfig(state, ports["apiserver"])
    pki = state / "pki"
    start(state, "etcd", [str(bins / "etcd"), "--data-dir", str(state / "etcd-data"), "--name", "ebbtide",
                          "--listen-client-urls", f"http://127.0.0.1:{ports['etcd']}",
                          "--advertise-client-urls", f"http://127.0.0.1:{ports['etcd']}",
                          "--listen-peer-urls", f"http://127.0.0.1:{ports['etcd_peer']}",
                          "--initial-advertise-peer-urls", f"http://127.0.0.1:{ports['etcd_peer']}",
                          "--initial-cluster", f"ebbtide=http://127.0.0.1:{ports['etcd_peer']}",
                          "--unsafe-no-fsync", "--quota-backend-bytes", str(2 * 1024**3)])
    # Opt-in: a KWOK-only cluster keeps the API server on 127.0.0.1. Real pods reach it through the `kubernetes`
    # Service, whose endpoint is the advertised address, so it must listen there; the API server reaches the kubelet
    # (logs, exec) at the node's InternalIP.
    if real_node:
        where = ["--bind-address=0.0.0.0", f"--advertise-address={REAL_NODE_IP}",
                 "--kubelet-preferred-address-types=InternalIP,Hostname"]
    else:
        where = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"]
    start(state, "kube-apiserver", [
        str(bins / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
        *where, f"--secure-port={ports['apiserver']}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}", f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/16",
        "--authorization-mode=RBAC", "--allow-privileged=true", "--enable-priority-and-fairness=false",
        f"--cert-dir={state / 'apiserver-certs'}", "--v=1",
    ])
    wait_for("kube-apiserver", lambda: api_get(state, "/readyz")[0] == 200)
    common = [f"--kubeconfig={kcfg}", "--leader-elect=false", "--bind-address=127.0.0.1"]
    start(state, "kube-controller-manager", [
        str(bins / "kube-controller-manager"), *common, f"--secure-port={cm_port}",
        f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
        "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
        "--concurrent-gc-syncs=10", "--v=1",
        # Its default client rate (20/s) lifts new nodes' not-ready taints 4-5 a second: 2,000 KWOK nodes would
        # wait minutes before any gang may land there (bench/results/scale.md). Large clusters raise it too.
        "--kube-api-qps=100", "--kube-api-burst=200",
        # kwok's heartbeats can lag on a loaded 2-core machine; fake nodes must not flap NotReady.
        "--node-monitor-grace-period=300s",
    ])
    start(state, "kube-scheduler", [str(bins / "kube-scheduler"), *common, f"--secure-port={scheduler_port}"])
    start(state, "kwok", [
        str(bins / "kwok"), f"--kubeconfig={kcfg}", "--manage-all-nodes=false",
        "--manage-nodes-with-label-selector=kwok.x-k8s.io/node=fake",
        # Pods of simulated engines (and with --real-engines, of vLLM) get their status from the fleet, not kwok.
        f"--config={kwok_stages(state, real_engines)}",
        "--cidr=10.0.0.1/16", "--node-ip=127.0.0.1", f"--server-address=127.0.0.1:{kwok_port}",
    ])
    wait_for("default namespace", lambda: api_get(state, "/api/v1/namespaces/default")[0] == 200)
    kubectl(bins, state, "apply", "-f", "-", stdin=node_manifests(_pools(nodes)))
    wait_for("nodes Ready", lambda: _nodes_ready(bins, state, nodes))
    log(f"up in {time.monotonic() - t0:.1f}s with {nodes} fake GPU nodes; KUBECONFIG={kcfg}")
    return kcfg


def _pools(nodes: int) -> list[tuple[int, str, int]]:
    if nodes == sum(c for c, _, _ in GPU_POOLS):
        return GPU_POOLS
    # Keep the mix's shape: half H100, a quarter each A100 and L4.
    h = max(1, nodes // 2)
    a = max(0, nodes // 4)
    return [(h, GPU_POOLS[0][1], GPU_POOLS[0][2]), (a, GPU_POOLS[1][1], GPU_POOLS[1][2]),
            (nodes - h - a, GPU_POOLS[2][1], GPU_POOLS[2][2])]


def _nodes_ready(bins: Path, state: Path, nodes: int) -> bool:
    out = kubectl(bins, state, "get", "nodes", "-o",
                  "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{'\\n'}{end}")
    return out.split().count("True") >= nodes


def reap(pid: int) -> None:
    """Collect `pid` if it exited and is our child (started by `up` in this process, as tests do): a zombie still
    answers kill(pid, 0), which made every stop wait its full grace period."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def down(state: Path, quiet: bool = False) -> None:
    for name in reversed(COMPONENTS):
        pid_file = state / f"{name}.pid"
        if not pid_file.exists():
            continue
        try:
            pid = int(pid_file.read_text())
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                reap(pid)
                os.kill(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)
    if not quiet:
        log("down")
    # etcd's data goes with the cluster: every `up` starts from an empty store.
    subprocess.run(["rm", "-rf", str(state / "etcd-data")], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "binaries"])
    parser.add_argument("--nodes", type=int, default=int(os.environ.get("EBBTIDE_NODES", "8")))
    parser.add_argument("--real-engines", action="store_true", help="leave engine=vllm and peft pods to the fleet")
    parser.add_argument("--real-node", action="store_true", help="API server reachable from real pods (opt-in)")
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("EBBTIDE_CLUSTER_DIR", DEFAULT_DIR)))
    args = parser.parse_args()
    if args.action == "up":
        print(up(args.dir.resolve(), args.nodes, args.real_engines, args.real_node))
    elif args.action == "down":
        down(args.dir.resolve())
    else:
        print(binaries())


if __name__ == "__main__":
    main()
