#!/usr/bin/env bash
# Builds (or reuses) the LoRA trainer's venv: peft and accelerate on top of the real-engine venv's torch and
# transformers. The real-engine venv is shared and never touched: this venv reads its packages through a .pth file
# and holds only the two packages the trainer adds (--no-deps: every dependency of theirs is already there).
# Prints the venv folder on stdout (its bin/python runs `python -m trainer`); progress goes to stderr.
# Honours EBBTIDE_TRAINER_ENV (a pre-built venv that imports peft) and EBBTIDE_CACHE.
# `--check` only prints the folder of a ready venv (exit 1 when there is none); it never builds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PEFT_VERSION=0.21.2
ACCELERATE_VERSION=1.15.0

log() { echo "[trainer-env] $*" >&2; }
die() { log "$*"; exit 1; }

if [[ -n "${EBBTIDE_TRAINER_ENV:-}" ]]; then
  "$EBBTIDE_TRAINER_ENV/bin/python" -c 'import peft' 2>/dev/null || die "EBBTIDE_TRAINER_ENV=$EBBTIDE_TRAINER_ENV has no peft"
  echo "$EBBTIDE_TRAINER_ENV"; exit 0
fi

if [[ "${1:-}" == "--check" ]]; then
  base="$("$here/real-engine-env.sh" --check)" || exit 1
else
  base="$("$here/real-engine-env.sh")"
fi
cache="${EBBTIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide}/trainer"
out="$cache/peft-$PEFT_VERSION-on-$(basename "$base")"
stamp="$out/.ebbtide-ready-peft-$PEFT_VERSION-accelerate-$ACCELERATE_VERSION"
if [[ -f "$stamp" ]]; then echo "$out"; exit 0; fi
[[ "${1:-}" == "--check" ]] && { log "no ready venv in $out: run hack/trainer-env.sh"; exit 1; }

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [[ -f "$stamp" ]]; then echo "$out"; exit 0; fi
rm -rf "$out"
"$base/bin/python" -m venv "$out"
site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
# The base venv's packages come after this venv's own: peft and accelerate are found here, the rest there.
site_of "$base" >"$(site_of "$out")/ebbtide-real-engine.pth"
log "installing peft $PEFT_VERSION and accelerate $ACCELERATE_VERSION (no dependencies) into $out"
"$out/bin/pip" install -q --no-deps "peft==$PEFT_VERSION" "accelerate==$ACCELERATE_VERSION" >&2
"$out/bin/python" -c 'import peft, transformers, torch' || die "peft does not import in $out"
touch "$stamp"
echo "$out"
