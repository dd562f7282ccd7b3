#!/usr/bin/env bash
# The kind path: `hack/kind.sh up | e2e | down` (make kind-up, make e2e-kind, make kind-down).
#   up    a kind cluster (1 control plane, 2 workers) whose workers advertise simulated GPUs (nvidia.com/gpu capacity
#         through the node status subresource, GPU feature discovery labels, the GPU taint), the operator and
#         simulated-engine images built and loaded, and the Helm chart installed into ebbtide-system.
#   e2e   tests/e2e against that cluster (EBBTIDE_E2E=1, KUBECONFIG=.run/kind/kubeconfig).
#   down  delete the cluster.
# Where Docker (a reachable daemon) or kind is missing, each command says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER:-ebbtide}"
KIND_VERSION="${KIND_VERSION:-v0.30.0}"
NAMESPACE="${EBBTIDE_NAMESPACE:-ebbtide-system}"
STATE=.run/kind
KCFG="$STATE/kubeconfig"
# The chart's default operator image (image.repository:appVersion) and the controllers' default simulated-engine
# image (controllers/planners/engines.py), so neither needs overriding once loaded into the nodes.
OPERATOR_IMAGE=ghcr.io/ebbtide/operator:0.1.0
ENGINE_IMAGE=ghcr.io/ebbtide/engine-sim:0.1.0
REDIS_IMAGE=redis:7
# Worker -> simulated GPU product (both are in the examples' allowed types).
PRODUCTS=("NVIDIA-H100-80GB-HBM3" "NVIDIA-A100-SXM4-80GB")

log() { echo "[kind] $*" >&2; }
skip() { log "$*"; log "skipping: the kind path needs Docker and kind (see README, section kind). Nothing was done."; exit 0; }

need_docker() {
  command -v docker >/dev/null || skip "no docker CLI on PATH"
  docker info >/dev/null 2>&1 || skip "no Docker daemon reachable (\`docker info\` fails)"
}

# kind from PATH, else built with Go into the same cache as the control-plane binaries.
kind_bin() {
  if command -v kind >/dev/null; then command -v kind; return; fi
  local cache="${EBBTIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide}/bin/kind-$KIND_VERSION"
  if [[ ! -x "$cache/kind" ]]; then
    command -v go >/dev/null || skip "kind is not on PATH and Go is missing to build it"
    log "building kind $KIND_VERSION"
    mkdir -p "$cache"
    GOBIN="$cache" CGO_ENABLED=0 go install "sigs.k8s.io/kind@$KIND_VERSION" >&2
  fi
  echo "$cache/kind"
}

kubectl_bin() {
  if command -v kubectl >/dev/null; then command -v kubectl; else echo "$(hack/build-control-plane.sh)/kubectl"; fi
}

up() {
  need_docker
  local kind helm k
  kind="$(kind_bin)"
  helm="$(hack/build-helm.sh)"
  k="$(kubectl_bin)"
  mkdir -p "$STATE"
  if ! "$kind" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    log "creating kind cluster $CLUSTER"
    "$kind" create cluster --name "$CLUSTER" --kubeconfig "$KCFG" --wait 120s --config - <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
YAML
  else
    "$kind" get kubeconfig --name "$CLUSTER" >"$KCFG"
  fi
  export KUBECONFIG="$KCFG"

  log "advertising simulated GPUs on the workers"
  local i=0 node
  for node in $("$k" get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[*].metadata.name}'); do
    local product="${PRODUCTS[$((i % ${#PRODUCTS[@]}))]}"
    "$k" label node "$node" --overwrite nvidia.com/gpu.present=true "nvidia.com/gpu.product=$product" \
      nvidia.com/gpu.count=8 nvidia.com/gpu.memory=81920 ebbtide.dev/rack=rack-0 topology.kubernetes.io/zone=zone-0
    "$k" taint node "$node" nvidia.com/gpu=present:NoSchedule --overwrite
    # Extended resources are advertised through the status subresource; the kubelet copies them to allocatable.
    "$k" patch node "$node" --subresource=status --type=json \
      -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"8"}]'
    i=$((i + 1))
  done
  for node in $("$k" get nodes -l nvidia.com/gpu.present=true -o jsonpath='{.items[*].metadata.name}'); do
    for _ in $(seq 1 30); do
      [[ "$("$k" get node "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" == "8" ]] && break
      sleep 1
    done
  done

  log "building and loading images"
  docker build -q -f operator/Dockerfile -t "$OPERATOR_IMAGE" . >/dev/null
  # kind nodes have no GPU operator to tell an engine its product; until the controllers pass it to the pod,
  # the kind engine image names one (the simulated engine's `--gpu auto` reads EBBTIDE_GPU_PRODUCT).
  docker build -q -f simulator/Dockerfile -t "$ENGINE_IMAGE-base" . >/dev/null
  printf 'FROM %s\nENV EBBTIDE_GPU_PRODUCT=%s\n' "$ENGINE_IMAGE-base" "${PRODUCTS[0]}" |
    docker build -q -t "$ENGINE_IMAGE" - >/dev/null
  docker pull -q "$REDIS_IMAGE" >/dev/null
  "$kind" load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$ENGINE_IMAGE" "$REDIS_IMAGE"

  log "installing the chart into $NAMESPACE"
  "$k" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$k" apply -f - >/dev/null
  "$k" label namespace "$NAMESPACE" --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
  "$helm" upgrade --install ebbtide helm/ebbtide --namespace "$NAMESPACE" --wait --timeout 5m \
    --set image.pullPolicy=IfNotPresent --set nodeAgent.enabled=true
  "$k" -n "$NAMESPACE" get pods -o wide
  log "ready: export KUBECONFIG=$PWD/$KCFG; then \`make e2e-kind\` or kubectl apply -f examples/"
}

e2e() {
  need_docker
  [[ -f "$KCFG" ]] || { log "no kind cluster yet: run \`make kind-up\` first"; exit 1; }
  EBBTIDE_E2E=1 KUBECONFIG="$PWD/$KCFG" EBBTIDE_KUBECTL="$(kubectl_bin)" \
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e
}

down() {
  need_docker
  "$(kind_bin)" delete cluster --name "$CLUSTER"
  rm -f "$KCFG"
}

case "${1:-}" in
  up) up ;;
  e2e) e2e ;;
  down) down ;;
  *) echo "usage: $0 up|e2e|down" >&2; exit 2 ;;
esac
