"""`python -m simulator.engine ...`: run one simulated engine; a bad command line exits with status 2."""

from __future__ import annotations

import asyncio
import logging
import sys

from simulator.engine.config import EngineConfigError, parse_args
from simulator.engine.server import serve


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until SIGTERM; returns the process exit status."""
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
    except EngineConfigError as exc:
        print(f"python -m simulator.engine: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
