#!/usr/bin/env bash
# Builds (or reuses) the pinned control-plane binaries into a cache outside the work tree.
# Prints the folder holding kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok.
# Honours EBBTIDE_ASSETS (a folder with pre-built binaries, like KUBEBUILDER_ASSETS). With EBBTIDE_NO_BUILD set
# (the tests set it) a missing binary is an error naming `make binaries` instead of a build of many minutes.
# Progress goes to stderr, with a heartbeat every 30 s during each go command; stdout is only the folder.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=heartbeat.sh
source "$here/heartbeat.sh"

bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)
have_all() { for b in "${bins[@]}"; do [[ -x "$1/$b" ]] || return 1; done; }

if [[ -n "${EBBTIDE_ASSETS:-}" ]]; then
  have_all "$EBBTIDE_ASSETS" || { echo "EBBTIDE_ASSETS=$EBBTIDE_ASSETS lacks one of: ${bins[*]}" >&2; exit 1; }
  echo "$EBBTIDE_ASSETS"; exit 0
fi

cache="${EBBTIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide}"
out="$cache/bin/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
if have_all "$out"; then echo "$out"; exit 0; fi
if [[ -n "${EBBTIDE_NO_BUILD:-}" ]]; then
  echo "the control-plane binaries are not built in $out: run \`make binaries\` first (or set EBBTIDE_ASSETS)" >&2
  exit 1
fi
mkdir -p "$out"
log() { echo "[build-control-plane] $*" >&2; }
beat() { local what=$1; shift; with_heartbeat build-control-plane "$what" "$@"; }
command -v go >/dev/null || { echo "go is required to build the control plane (or set EBBTIDE_ASSETS)" >&2; exit 1; }

start=$(date +%s)
# k8s.io/kubernetes is not meant to be a dependency: its go.mod replaces every staging module with a
# local folder. A wrapper module pins each staging module to its published version instead.
work="$cache/src/kube-$KUBE_VERSION"
mkdir -p "$work"
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client
  cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils
  pod-security-admission sample-apiserver streaming)
{
  echo "module ebbtide.dev/controlplane"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  for m in "${staging[@]}"; do echo "replace k8s.io/$m => k8s.io/$m $KUBE_STAGING_VERSION"; done
} > "$work/go.mod"
cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
if [[ ! -x "$out/kube-apiserver" || ! -x "$out/kube-controller-manager" || ! -x "$out/kube-scheduler" || ! -x "$out/kubectl" ]]; then
  log "resolving k8s.io/kubernetes $KUBE_VERSION (downloads its modules)"
  beat "resolving k8s.io/kubernetes" bash -c 'cd "$1" && GOFLAGS=-mod=mod go mod tidy -e >&2 2>&1' _ "$work" || true
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$out/$c" ]] && continue
    log "building $c"
    beat "building $c" bash -c 'cd "$1" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -ldflags "$2" -o "$3" "$4" >&2' \
      _ "$work" "$ldflags" "$out/$c" "k8s.io/kubernetes/cmd/$c"
  done
fi
if [[ ! -x "$out/etcd" ]]; then
  log "building etcd $ETCD_VERSION"
  # etcd's own main module carries replace directives, so `go install` refuses it; its main is one call.
  ew="$cache/src/etcd-$ETCD_VERSION"; mkdir -p "$ew"
  printf 'module ebbtide.dev/etcd\n\ngo 1.26.0\n' > "$ew/go.mod"
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > "$ew/main.go"
  beat "building etcd" bash -c 'cd "$1" && GOFLAGS=-mod=mod go get "go.etcd.io/etcd/server/v3@$2" >&2 &&
    GOFLAGS=-mod=mod go mod tidy >&2 && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -o "$3" . >&2' _ "$ew" "$ETCD_VERSION" "$out/etcd"
fi
if [[ ! -x "$out/kwok" ]]; then
  log "building kwok $KWOK_VERSION"
  GOBIN="$out" CGO_ENABLED=0 beat "building kwok" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
fi
have_all "$out" || { echo "build incomplete in $out" >&2; exit 1; }
log "built in $(( $(date +%s) - start ))s"
echo "$out"
