#!/usr/bin/env bash
# Builds (or reuses) the pinned helm CLI into the same cache as the control plane; prints the helm binary's path.
# Honours EBBTIDE_ASSETS when that folder holds a helm binary, and EBBTIDE_CACHE / XDG_CACHE_HOME. With
# EBBTIDE_NO_BUILD set (the tests set it) a missing helm is an error naming `make binaries`, not a build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=heartbeat.sh
source "$here/heartbeat.sh"

if [[ -n "${EBBTIDE_ASSETS:-}" && -x "${EBBTIDE_ASSETS}/helm" ]]; then
  echo "$EBBTIDE_ASSETS/helm"; exit 0
fi

cache="${EBBTIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide}"
out="$cache/bin/helm-$HELM_VERSION"
if [[ -x "$out/helm" ]]; then echo "$out/helm"; exit 0; fi
if [[ -n "${EBBTIDE_NO_BUILD:-}" ]]; then
  echo "helm $HELM_VERSION is not built in $out: run \`make binaries\` first (or put helm in EBBTIDE_ASSETS)" >&2
  exit 1
fi
command -v go >/dev/null || { echo "go is required to build helm (or put a helm binary in EBBTIDE_ASSETS)" >&2; exit 1; }
mkdir -p "$out"
start=$(date +%s)
echo "[build-helm] building helm $HELM_VERSION" >&2
# The version stamp makes `helm version` truthful; helm reads it from its internal version package.
GOBIN="$out" CGO_ENABLED=0 with_heartbeat build-helm "building helm" go install \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
[[ -x "$out/helm" ]] || { echo "build of helm failed in $out" >&2; exit 1; }
echo "[build-helm] built in $(( $(date +%s) - start ))s" >&2
echo "$out/helm"
