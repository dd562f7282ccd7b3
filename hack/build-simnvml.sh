#!/usr/bin/env bash
# Builds the simulated NVML (simulator/nvml/libnvidia-ml.c) as libnvidia-ml.so.1 in the directory given (default
# .run/simnvml) and prints the library's path. Exit 3: no C compiler here.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.run/simnvml}"
cc="${CC:-cc}"
if ! command -v "$cc" >/dev/null; then
  echo "build-simnvml: no C compiler ($cc); Debian's gcc package provides one" >&2
  exit 3
fi
mkdir -p "$out"
"$cc" -shared -fPIC -O2 -Wall -Wextra -Werror -o "$out/libnvidia-ml.so.1.tmp" simulator/nvml/libnvidia-ml.c
mv "$out/libnvidia-ml.so.1.tmp" "$out/libnvidia-ml.so.1"
echo "$out/libnvidia-ml.so.1"
