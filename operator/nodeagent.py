"""The node agent: applies the per-GPU power caps the operator writes on this node, through NVML.

`python operator/nodeagent.py --node $NODE_NAME` (the DaemonSet sets NODE_NAME from the downward API).

Interface: the operator writes the node annotation `ebbtide.dev/power-caps` = {"<gpu index>": watts | null}; the
agent watches its own node, applies the caps with `adapters.nvml.CapApplier` (milliwatts, per device, within the
constraints, enforced limit read back, default restored for absent or null entries, refused values reported and
not retried hot) and answers in `ebbtide.dev/power-caps-enforced`. A node annotation because the node is the one
object the agent must know anyway, one watch with a field selector sees only its own caps, the operator needs no
new CRD, both sides survive restarts (the desired caps are stored in the API server), and `kubectl describe node`
shows what is asked and what is enforced. On SIGTERM every device goes back to its default limit.

Needs root or CAP_SYS_ADMIN and the GPU devices (NVML's set-limit is privileged); nvidia-ml-py is the `nodeagent`
extra. This script imports no simulation code.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kubernetes import client, watch

from adapters.kube import load_config
from adapters.nvml import (
    CAPS_ANNOTATION,
    ENFORCED_ANNOTATION,
    CapApplier,
    NvmlError,
    PynvmlBackend,
    parse_caps,
    render_reports,
)

log = logging.getLogger("nodeagent")


def run(node: str, kubeconfig: str | None, resync_s: float) -> int:
    """Watch this node's caps and apply them until SIGTERM; then restore every device's default limit."""
    try:
        nvml = PynvmlBackend()
    except NvmlError as exc:
        log.error("NVML unavailable: %s", exc)
        return 2
    agent = CapApplier(nvml)
    core = client.CoreV1Api(load_config(kubeconfig))
    stopping = False

    def stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)

    def apply(annotation: str | None) -> None:
        reports = agent.apply(parse_caps(annotation), time.monotonic())
        for r in reports:
            if r.error:
                log.warning("GPU %d: %s", r.index, r.error)
        body: dict[str, Any] = {"metadata": {"annotations": {ENFORCED_ANNOTATION: render_reports(reports)}}}
        try:
            core.patch_node(node, body)
        except client.ApiException as exc:
            log.warning("cannot report enforced limits on node %s: %s", node, exc.reason)

    try:
        while not stopping:
            try:
                # Each watch ends after resync_s; the caps are re-applied then too, so a limit changed behind the
                # agent's back (nvidia-smi -pl) is put back.
                for ev in watch.Watch().stream(
                    core.list_node, field_selector=f"metadata.name={node}", timeout_seconds=int(resync_s)
                ):
                    apply((ev["object"].metadata.annotations or {}).get(CAPS_ANNOTATION))
                    if stopping:
                        break
            except client.ApiException as exc:
                log.warning("node watch: %s; retrying in 5 s", exc.reason)
                time.sleep(5)
    finally:
        log.info("restoring every GPU's default power limit")
        agent.apply({}, time.monotonic())
        nvml.close()
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node", default=os.environ.get("NODE_NAME"), help="this node's name (default $NODE_NAME)")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--resync-seconds", type=float, default=60.0)
    args = p.parse_args()
    if not args.node:
        p.error("--node (or $NODE_NAME) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s nodeagent %(message)s")
    sys.exit(run(args.node, args.kubeconfig, args.resync_seconds))


if __name__ == "__main__":
    main()
