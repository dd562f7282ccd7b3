"""Clocks the engine runs on: virtual seconds, either scaled from the wall clock or jumping instantly."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Virtual time in seconds and a way to wait for a virtual instant."""

    def now(self) -> float:
        """Current virtual time, seconds."""
        ...

    async def sleep_until(self, t: float) -> None:
        """Return once virtual time has reached t."""
        ...


class ScaledClock:
    """Virtual time = wall time since creation x time_scale (time_scale 100 runs a minute in 0.6 s)."""

    def __init__(self, time_scale: float = 1.0, start: float = 0.0) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.time_scale = time_scale
        self._start = start
        self._origin = time.monotonic()

    def now(self) -> float:
        """Current virtual time, seconds."""
        return self._start + (time.monotonic() - self._origin) * self.time_scale

    async def sleep_until(self, t: float) -> None:
        """Sleep the wall time that corresponds to the remaining virtual time (at least one loop turn)."""
        await asyncio.sleep(max(0.0, (t - self.now()) / self.time_scale))


class InstantClock:
    """Virtual time that only moves when someone waits for a later instant: runs as fast as the CPU allows."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        """Current virtual time, seconds."""
        return self._now

    async def sleep_until(self, t: float) -> None:
        """Jump to t (never backwards) and yield once so other tasks run."""
        self._now = max(self._now, t)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by the given seconds."""
        self._now += max(0.0, seconds)
