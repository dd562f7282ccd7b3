#!/usr/bin/env bash
# Makes sure Debian's redis-server is installed (the autoscaler's history store is tested against it).
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
echo "[ensure-redis] installing Debian's redis-server" >&2
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q redis-server >/dev/null; }
# The package starts a system service; tests start their own servers on free ports.
$SUDO service redis-server stop >/dev/null 2>&1 || true
command -v redis-server >/dev/null
