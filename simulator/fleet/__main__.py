"""`python -m simulator.fleet --kubeconfig PATH`: run the simulated fleet against a cluster with KWOK nodes.

With `--vllm-env` (a venv holding the real vLLM, `hack/real-engine-env.sh` prints one) and `--models-dir` (the
folder standing for the engine pods' /models mount), pods of `engine: vllm` run a real `vllm serve` too; with
`--trainer-env` (hack/trainer-env.sh), FineTuneJob workers of `trainer.type: peft` run the real trainer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from pathlib import Path

from simulator.fleet.fleet import Fleet, FleetSettings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--state-dir", type=Path, default=Path(".run/fleet"))
    p.add_argument("--engine-time-scale", type=float, default=1.0, help="engines' virtual seconds per second")
    p.add_argument("--cold-start-scale", type=float, default=30.0, help="cold starts run this much faster")
    p.add_argument("--image-pull-seconds", type=float, default=60.0)
    p.add_argument("--load-gbps", type=float, default=2.0, help="weight load bandwidth per replica, GB/s")
    p.add_argument(
        "--engine-host",
        default="127.0.0.1",
        help="address simulated engines listen on and are announced at (a real node's IP for in-cluster operators)",
    )
    p.add_argument(
        "--vllm-env",
        type=Path,
        default=os.environ.get("EBBTIDE_REAL_ENGINE_ENV") or None,
        help="venv with the real vLLM (bin/vllm); engine=vllm pods run it (default $EBBTIDE_REAL_ENGINE_ENV)",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=os.environ.get("EBBTIDE_MODELS_DIR") or None,
        help="local folder for the pods' /models mount: pvc://NAME serves DIR/NAME (default $EBBTIDE_MODELS_DIR)",
    )
    p.add_argument(
        "--trainer-env",
        type=Path,
        default=os.environ.get("EBBTIDE_TRAINER_ENV") or None,
        help="venv that imports peft (hack/trainer-env.sh); engine=peft pods run the real trainer (trainer/)",
    )
    args = p.parse_args()
    if args.vllm_env is not None and not (args.vllm_env / "bin" / "vllm").exists():
        p.error(f"--vllm-env {args.vllm_env} has no bin/vllm (build one with hack/real-engine-env.sh)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s fleet %(message)s")
    settings = FleetSettings(
        state_dir=args.state_dir.resolve(),
        engine_time_scale=args.engine_time_scale,
        cold_start_scale=args.cold_start_scale,
        image_pull_seconds=args.image_pull_seconds,
        load_gbps=args.load_gbps,
        engine_host=args.engine_host,
        vllm_env=args.vllm_env.resolve() if args.vllm_env else None,
        models_dir=args.models_dir.resolve() if args.models_dir else None,
        trainer_env=args.trainer_env.resolve() if args.trainer_env else None,
    )
    # Probes of real engines would log every request at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # SIGTERM cancels the fleet's main task (Fleet.run), which stops its real engines first.
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(Fleet(settings, args.kubeconfig).run())


if __name__ == "__main__":
    main()
