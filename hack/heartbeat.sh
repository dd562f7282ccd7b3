#!/usr/bin/env bash
# `hack/heartbeat.sh TAG WHAT CMD...` runs CMD and, while it runs, prints "[TAG] still WHAT (Ns)" on stderr every
# EBBTIDE_HEARTBEAT_SECONDS (30): go builds and pip installs print nothing for minutes, which reads like a hang.
# The build scripts source this file for `with_heartbeat`; stdout stays CMD's own (they print only a folder).

with_heartbeat() {
  local tag=$1 what=$2 parent=$$ every=${EBBTIDE_HEARTBEAT_SECONDS:-30} start beat rc=0
  shift 2
  start=$(date +%s)
  (
    nap=""
    trap '[[ -n "$nap" ]] && kill "$nap" 2>/dev/null; exit 0' TERM
    while :; do
      sleep "$every" & nap=$!
      wait "$nap"
      # Stop quietly once the caller is gone (Ctrl-C): a background job ignores SIGINT.
      kill -0 "$parent" 2>/dev/null || exit 0
      echo "[$tag] still $what ($(( $(date +%s) - start ))s)"
    done
  ) >&2 &
  beat=$!
  "$@" || rc=$?
  kill "$beat" 2>/dev/null || true
  wait "$beat" 2>/dev/null || true
  return "$rc"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  [[ $# -ge 3 ]] || { echo "usage: $0 TAG WHAT CMD..." >&2; exit 2; }
  with_heartbeat "$@"
fi
