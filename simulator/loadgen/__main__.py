"""CLI: replay a trace against an engine or gateway and print the latency summary.

`--compress 60 --duration 120` sends up to 120 wall seconds, i.e. the first two hours of trace time played
60 times faster (the Azure traces hold one hour, so they end after 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from autoscaler.types import SLO
from simulator.loadgen.replay import ReplayConfig, replay, send_lag, summarize
from simulator.traces import TRACE_NAMES, load_trace


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m simulator.loadgen", description="Replay an LLM trace.")
    p.add_argument("--trace", required=True, choices=TRACE_NAMES)
    p.add_argument("--target", required=True, help="base URL of an engine or gateway")
    p.add_argument("--compress", type=float, default=1.0, help="trace seconds per wall second")
    p.add_argument("--duration", type=float, default=None, help="wall seconds to send for (default: all)")
    p.add_argument("--start", type=float, default=0.0, help="trace second to start from")
    p.add_argument("--rate-scale", type=float, default=1.0, help="ServeGen: multiply every client's rate")
    p.add_argument("--seed", type=int, default=0, help="ServeGen synthesis seed")
    p.add_argument("--model", default="simulated", help="model field sent with each request")
    p.add_argument("--prompt-mode", choices=["token_ids", "words"], default="token_ids")
    p.add_argument("--max-in-flight", type=int, default=4096)
    p.add_argument(
        "--engine-time-scale",
        type=float,
        default=1.0,
        help="virtual seconds per wall second of the target engines (their --time-scale); "
        "latencies are reported in virtual seconds",
    )
    p.add_argument("--ttft-slo", type=float, default=2.0, help="seconds")
    p.add_argument("--itl-slo", type=float, default=0.1, help="seconds")
    p.add_argument("--json", dest="json_out", default=None, help="write per-request records here")
    return p.parse_args(argv)


async def _run(args: argparse.Namespace) -> int:
    trace_span = None if args.duration is None else args.duration * args.compress
    trace = load_trace(
        args.trace, seed=args.seed, start_s=args.start, duration_s=trace_span, rate_scale=args.rate_scale
    )
    cfg = ReplayConfig(
        target=args.target,
        model=args.model,
        compress=args.compress,
        duration_s=args.duration,
        max_in_flight=args.max_in_flight,
        prompt_mode=args.prompt_mode,
        time_scale=args.engine_time_scale,
    )
    print(f"replaying {len(trace)} requests of {args.trace} at {args.compress:g}x against {args.target}")
    records = await replay(trace, cfg)
    summary = summarize(records, SLO(ttft_s=args.ttft_slo, itl_s=args.itl_slo))
    print(summary.format())
    print(f"worst send lag {send_lag(records):.3f} s")
    if args.json_out:
        payload = json.dumps({"summary": summary.as_dict(), "requests": [asdict(r) for r in records]})
        await asyncio.to_thread(Path(args.json_out).write_text, payload)
    return 0 if summary.succeeded else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return asyncio.run(_run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
