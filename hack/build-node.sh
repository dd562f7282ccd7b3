#!/usr/bin/env bash
# Builds (or reuses) the real node's binaries into the control-plane build's cache: kubelet and kube-proxy at the
# control plane's pinned version, and a static pause binary (the sandbox image's only file, so nothing is pulled).
# Prints the folder holding them. Progress goes to stderr with a heartbeat; stdout is only the folder.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=heartbeat.sh
source "$here/heartbeat.sh"

cache="${EBBTIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide}"
out="$cache/bin/node-k8s-$KUBE_VERSION"
bins=(kubelet kube-proxy pause)
have_all() { for b in "${bins[@]}"; do [[ -x "$out/$b" ]] || return 1; done; }
if have_all; then echo "$out"; exit 0; fi
if [[ -n "${EBBTIDE_NO_BUILD:-}" ]]; then
  echo "the real node's binaries are not built in $out: run \`make real-node\` first" >&2
  exit 1
fi
command -v go >/dev/null || { echo "go is required to build the kubelet and kube-proxy" >&2; exit 1; }
log() { echo "[build-node] $*" >&2; }
mkdir -p "$out"
start=$(date +%s)

# The same wrapper module as hack/build-control-plane.sh (staging modules pinned to their published versions), in
# its own folder so a concurrent control-plane build never sees a half-written go.mod.
cp_src="$cache/src/kube-$KUBE_VERSION"
work="$cache/src/node-$KUBE_VERSION"
mkdir -p "$work"
if [[ ! -f "$work/go.mod" ]]; then
  if [[ -f "$cp_src/go.mod" && -f "$cp_src/go.sum" ]]; then
    cp "$cp_src/go.mod" "$cp_src/go.sum" "$work/"
    sed -i 's#^module .*#module ebbtide.dev/node#' "$work/go.mod"
  else
    staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
      cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client
      cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
      kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils
      pod-security-admission sample-apiserver streaming)
    {
      echo "module ebbtide.dev/node"; echo; echo "go 1.26.0"; echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"; echo
      for m in "${staging[@]}"; do echo "replace k8s.io/$m => k8s.io/$m $KUBE_STAGING_VERSION"; done
    } > "$work/go.mod"
  fi
fi
cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36"
if [[ ! -x "$out/kubelet" || ! -x "$out/kube-proxy" ]]; then
  log "resolving k8s.io/kubernetes $KUBE_VERSION for kubelet and kube-proxy"
  with_heartbeat build-node "resolving modules" bash -c 'cd "$1" && GOFLAGS=-mod=mod go mod tidy -e >&2 2>&1' _ "$work" || true
  for c in kubelet kube-proxy; do
    [[ -x "$out/$c" ]] && continue
    log "building $c"
    with_heartbeat build-node "building $c" bash -c \
      'cd "$1" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -ldflags "$2" -o "$3.tmp" "$4" >&2 && mv "$3.tmp" "$3"' \
      _ "$work" "$ldflags" "$out/$c" "k8s.io/kubernetes/cmd/$c"
  done
fi
if [[ ! -x "$out/pause" ]]; then
  # The sandbox container's process: it only waits for a signal to exit (what the upstream pause image does).
  log "building pause"
  pw="$cache/src/pause"; mkdir -p "$pw"
  printf 'module ebbtide.dev/pause\n\ngo 1.26.0\n' > "$pw/go.mod"
  cat > "$pw/main.go" <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c
}
GO
  (cd "$pw" && CGO_ENABLED=0 go build -ldflags "-s -w" -o "$out/pause" . >&2)
fi
have_all || { echo "build incomplete in $out" >&2; exit 1; }
log "built in $(( $(date +%s) - start ))s"
echo "$out"
