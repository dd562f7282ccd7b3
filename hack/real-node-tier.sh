#!/usr/bin/env bash
# The real-node tier of `make test`: a real node (containerd + kubelet + kube-proxy) joins a local control plane and
# the Helm chart's operator and Redis run in real pods on it (tests/realnode). Everything it needs (Debian packages,
# the node binaries, the operator and Redis images) is built by a first `up`, before pytest starts; the tier's own
# `up` then takes seconds. Skips with a loud, named reason only where the host cannot run a node: it needs root,
# apt-get or the packages already there, and Linux with cgroups. Any other failure fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
PYTEST="${PYTEST:-$PY -m pytest}"
started=$SECONDS
skip() { echo "!! REAL-NODE TIER SKIPPED: $*" >&2; exit 0; }

[[ "$(uname -s)" == Linux ]] || skip "a real node needs Linux, not $(uname -s)"
[[ $(id -u) -eq 0 ]] || skip "a real node needs root (containerd, the kubelet, iptables, mounts); run make test as root"
[[ -d /sys/fs/cgroup ]] || skip "no cgroup filesystem at /sys/fs/cgroup"
command -v apt-get >/dev/null || command -v containerd >/dev/null ||
  skip "neither apt-get nor containerd: install containerd, runc, containernetworking-plugins and iptables"

prepare=".run/real-node-prepare"
echo "== real-node tier: packages, kubelet and kube-proxy, the operator and Redis images (cold: about 4 min)"
trap '$PY hack/real_node.py down --dir "$prepare" >/dev/null 2>&1 || true' EXIT
$PY hack/real_node.py up --dir "$prepare" --nodes 1 >/dev/null || { echo "!! the real node did not come up" >&2; exit 1; }
$PY hack/real_node.py down --dir "$prepare" || { echo "!! the real node did not come down" >&2; exit 1; }
trap - EXIT
echo "   ready in $((SECONDS - started))s"

echo "== real-node tier: the chart installed with Helm onto a real node"
# shellcheck disable=SC2086
$PYTEST -q -rs -p no:cacheprovider -m realnode tests/realnode
rc=$?
echo "== real-node tier: $((SECONDS - started))s in all (exit $rc)"
exit "$rc"
