#!/usr/bin/env bash
# `make data [DATA_DIR=...]`: fetches the full public traces the benchmarks read into a folder outside the work
# tree (DATA_DIR, else $EBBTIDE_DATA, else ${XDG_CACHE_HOME:-~/.cache}/ebbtide/data), each source's licence and
# description beside its files, and checks every trace against hack/data.sha256 (the files the committed
# benchmark results were made with). Sources are pinned commits of their GitHub repositories, fetched as shallow
# sparse clones (only the files listed below). Needs git and access to github.com (EBBTIDE_GITHUB_URL: a mirror).
# Then: export EBBTIDE_DATA=<the folder it prints>.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=heartbeat.sh
source "$here/heartbeat.sh"
repo_root="$(cd "$here/.." && pwd)"
github="${EBBTIDE_GITHUB_URL:-https://github.com}"

dest="$(realpath -m "${1:-${EBBTIDE_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide/data}}")"
case "$dest/" in
  "$repo_root/"*) echo "refusing $dest: the full traces stay outside the work tree (give another DATA_DIR)" >&2; exit 1 ;;
esac
mkdir -p "$dest"
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
log() { echo "[data] $*" >&2; }

# fetch REPO COMMIT PATTERN...: the files of github.com/REPO at COMMIT matching the sparse-checkout PATTERNs,
# into $got (a clone in a temporary folder). Blobs outside the patterns are never downloaded.
fetch() {
  local repo=$1 commit=$2
  shift 2
  got="$src/${repo/\//+}"
  git init -q "$got"
  git -C "$got" remote add origin "$github/$repo.git"
  git -C "$got" config core.sparseCheckout true
  printf '%s\n' "$@" >"$got/.git/info/sparse-checkout"
  log "fetching $repo at ${commit:0:12}"
  with_heartbeat data "fetching $repo" git -C "$got" fetch -q --depth 1 --filter=blob:none origin "$commit" >&2
  with_heartbeat data "checking out $repo" git -C "$got" checkout -q --detach FETCH_HEAD >&2
}

fetch Azure/AzurePublicDataset b469a113cedca53ddc3bdea71a143dc4b7d8700c \
  /LICENSE /AzureLLMInferenceDataset2023.md /data/AzureLLMInferenceTrace_code.csv /data/AzureLLMInferenceTrace_conv.csv
azure="$got"
mkdir -p "$dest/azure-llm-2023"
cp "$azure"/data/AzureLLMInferenceTrace_{code,conv}.csv "$azure/LICENSE" "$dest/azure-llm-2023/"
cp "$azure/AzureLLMInferenceDataset2023.md" "$dest/azure-llm-2023/README.md"

fetch alibaba/ServeGen f891d1189eb32b3868dfc443800c4150548c282a \
  /LICENSE /README.md '/data/language/m-mid/chunk-*-trace.csv'
servegen="$got"
mkdir -p "$dest/servegen/m-mid"
cp "$servegen/LICENSE" "$servegen/README.md" "$dest/servegen/"
cp "$servegen"/data/language/m-mid/chunk-*-trace.csv "$dest/servegen/m-mid/"

# The trace's terms are in its README; the same files ship under Apache-2.0 in hkust-adsl/kubernetes-scheduler-simulator.
fetch alibaba/clusterdata 7a6c496e4f4b6ce6150be8f881cb051bf2abff42 \
  /cluster-trace-gpu-v2023/README.md '/cluster-trace-gpu-v2023/csv/*.csv'
alibaba="$got"
mkdir -p "$dest/alibaba-gpu-2023"
cp "$alibaba"/cluster-trace-gpu-v2023/csv/*.csv "$alibaba/cluster-trace-gpu-v2023/README.md" "$dest/alibaba-gpu-2023/"

fetch ml-energy/zeus 75a8b9398034eb9baf74ca0a830c2c31bcce52cd \
  /LICENSE /examples/research_reproducibility/zeus_nsdi23/trace/README.md \
  '/examples/research_reproducibility/zeus_nsdi23/trace/summary_*.csv'
zeus="$got"
mkdir -p "$dest/zeus-power"
cp "$zeus/LICENSE" "$zeus"/examples/research_reproducibility/zeus_nsdi23/trace/{README.md,summary_*.csv} "$dest/zeus-power/"

log "checking $(wc -l <"$here/data.sha256") files against hack/data.sha256"
(cd "$dest" && sha256sum --check --quiet "$here/data.sha256") || {
  echo "some traces in $dest differ from the ones the benchmark results were made with (listed above)" >&2
  exit 1
}
log "done: export EBBTIDE_DATA=$dest"
echo "$dest"
