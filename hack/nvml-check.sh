#!/usr/bin/env bash
# Device check for real hardware: on a machine with an NVIDIA GPU and root, read GPU 0's power-limit constraints,
# set a cap through the node agent's NVML port (adapters/nvml.py), read the enforced limit back, restore the
# default, and print each value. Without a GPU, NVML or root it exits 2 with the reason.
# Usage: hack/nvml-check.sh [gpu-index] [cap-watts]   (default: GPU 0, the midpoint of its constraints)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidiactl ]; then
  echo "nvml-check: no NVIDIA GPU on this machine (no nvidia-smi, no /dev/nvidiactl); nothing to check" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "nvml-check: setting a power limit needs root (or CAP_SYS_ADMIN); rerun with sudo" >&2
  exit 2
fi
exec "$PY" - "${1:-0}" "${2:-}" <<'PYEOF'
import sys
from adapters.nvml import NvmlError, PynvmlBackend

index = int(sys.argv[1])
try:
    nvml = PynvmlBackend()
    count = nvml.device_count()
    if index >= count:
        sys.exit(f"nvml-check: GPU {index} does not exist ({count} GPU(s))")
    lo, hi = nvml.constraints_mw(index)
    default = nvml.default_limit_mw(index)
    before = nvml.enforced_limit_mw(index)
    cap = int(float(sys.argv[2]) * 1000) if sys.argv[2] else (lo + hi) // 2
    print(f"GPU {index}: constraints {lo} .. {hi} mW, default {default} mW, enforced {before} mW, "
          f"draw {nvml.power_usage_mw(index)} mW")
    nvml.set_limit_mw(index, cap)
    print(f"GPU {index}: set {cap} mW -> enforced {nvml.enforced_limit_mw(index)} mW")
    nvml.set_limit_mw(index, default)
    print(f"GPU {index}: restored default {default} mW -> enforced {nvml.enforced_limit_mw(index)} mW")
    nvml.close()
except NvmlError as exc:
    print(f"nvml-check: NVML refused: {exc}", file=sys.stderr)
    sys.exit(2)
PYEOF
