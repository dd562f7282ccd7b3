"""The simulated vLLM engine: OpenAI-compatible HTTP API, vLLM metrics, admin endpoints, trainer mode.

`parse_args(argv)` turns the engine command line into an EngineConfig, `create_app(cfg, clock)` builds the
aiohttp application (many can run in one process) and `serve(cfg)` runs one as `python -m simulator.engine`.
"""

from simulator.engine.clock import Clock, InstantClock, ScaledClock
from simulator.engine.config import EngineConfig, EngineConfigError, parse_args
from simulator.engine.server import CONFIG_KEY, ENGINE_KEY, TRAINER_KEY, create_app, serve

__all__ = [
    "CONFIG_KEY",
    "ENGINE_KEY",
    "TRAINER_KEY",
    "Clock",
    "EngineConfig",
    "EngineConfigError",
    "InstantClock",
    "ScaledClock",
    "create_app",
    "parse_args",
    "serve",
]
