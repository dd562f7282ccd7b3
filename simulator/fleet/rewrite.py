"""Turning a pod's container command line into the argv of an in-process engine (pure)."""

from __future__ import annotations

from pathlib import Path


def engine_argv(args: list[str], gpu_product: str, port: int, state_dir: Path, time_scale: float) -> list[str]:
    """The pod's args with node-specific values filled in: GPU product, loopback port, local checkpoint dir."""
    out: list[str] = []
    i = 0
    seen: set[str] = set()
    while i < len(args):
        flag = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if flag in ("--gpu", "--port", "--host", "--checkpoint-dir", "--time-scale") and value is not None:
            seen.add(flag)
            if flag == "--gpu":
                value = gpu_product if value == "auto" else value
            elif flag == "--port":
                value = str(port)
            elif flag == "--host":
                value = "127.0.0.1"
            elif flag == "--checkpoint-dir":
                value = str(local_path(value, state_dir))
            out += [flag, value]
            i += 2
            continue
        out.append(flag)
        i += 1
    if "--port" not in seen:
        out += ["--port", str(port)]
    if "--host" not in seen:
        out += ["--host", "127.0.0.1"]
    if "--time-scale" not in seen:
        out += ["--time-scale", repr(time_scale)]
    return out


def local_path(uri: str, state_dir: Path) -> Path:
    """Where a storage URI (pvc://claim/path, s3://bucket/key) lives on this machine's fake storage."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return Path(uri)
    return state_dir / "storage" / scheme / rest.strip("/")
