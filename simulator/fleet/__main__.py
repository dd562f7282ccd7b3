"""`python -m simulator.fleet --kubeconfig PATH`: run the simulated fleet against a cluster with KWOK nodes."""

from __future__ import annotations

import argparse
import asyncio
import logging
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
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s fleet %(message)s")
    settings = FleetSettings(
        state_dir=args.state_dir.resolve(),
        engine_time_scale=args.engine_time_scale,
        cold_start_scale=args.cold_start_scale,
        image_pull_seconds=args.image_pull_seconds,
        load_gbps=args.load_gbps,
    )
    asyncio.run(Fleet(settings, args.kubeconfig).run())


if __name__ == "__main__":
    main()
