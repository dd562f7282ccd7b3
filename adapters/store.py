"""History store: per-service indicator series and saved model state, in Redis or in memory.

Retention is bounded by point count and by age, where "now" is the time of the newest appended point (time
is injected, as everywhere in the autoscaler). Redis faults surface as `StoreUnavailable`, which the shell
maps to degraded mode (`ServiceObservation.history_available=False`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError

Point = tuple[float, float]  # (t, value)


class StoreUnavailable(Exception):
    """The history store could not be reached or answered with an error; retrying later may work."""


@dataclass(frozen=True)
class Retention:
    """How much history each series keeps."""

    max_points: int = 20_160  # two weeks of one point a minute: enough for a weekly seasonal profile
    max_age_s: float = 15 * 86400.0

    def __post_init__(self) -> None:
        if self.max_points < 1:
            raise ValueError(f"max_points must be at least 1, got {self.max_points}")
        if not self.max_age_s > 0:
            raise ValueError(f"max_age_s must be positive, got {self.max_age_s}")


class HistoryStore(Protocol):
    """Where the autoscaler keeps indicator history and forecaster state across restarts."""

    async def append(self, service: str, t: float, values: Mapping[str, float]) -> None:
        """Record one point per indicator at time t, trimming to the retention."""
        ...

    async def range(self, service: str, indicator: str, start: float, end: float) -> list[Point]:
        """Points with start <= t <= end, oldest first."""
        ...

    async def save_state(self, service: str, key: str, state: bytes) -> None:
        """Store an opaque blob (e.g. a forecaster's JSON state)."""
        ...

    async def load_state(self, service: str, key: str) -> bytes | None:
        """The blob saved under key, or None."""
        ...

    async def delete_service(self, service: str) -> None:
        """Forget everything about a deleted service."""
        ...


def _finite_points(t: float, values: Mapping[str, float]) -> dict[str, float]:
    if not math.isfinite(t):
        raise ValueError(f"time must be finite, got {t}")
    return {k: float(v) for k, v in values.items() if math.isfinite(v)}


class MemoryStore:
    """In-process HistoryStore for tests, the simulator and running without Redis."""

    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._series: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        self._state: dict[tuple[str, str], bytes] = {}

    async def append(self, service: str, t: float, values: Mapping[str, float]) -> None:
        """Record one point per indicator at time t, trimming to the retention."""
        for indicator, value in _finite_points(t, values).items():
            times, vals = self._series.setdefault((service, indicator), ([], []))
            i = bisect.bisect_right(times, t)
            times.insert(i, t)
            vals.insert(i, value)
            cut = bisect.bisect_left(times, t - self.retention.max_age_s)
            cut = max(cut, len(times) - self.retention.max_points)
            if cut > 0:
                del times[:cut]
                del vals[:cut]

    async def range(self, service: str, indicator: str, start: float, end: float) -> list[Point]:
        """Points with start <= t <= end, oldest first."""
        times, vals = self._series.get((service, indicator), ([], []))
        lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
        return list(zip(times[lo:hi], vals[lo:hi], strict=True))

    async def save_state(self, service: str, key: str, state: bytes) -> None:
        """Store an opaque blob."""
        self._state[(service, key)] = bytes(state)

    async def load_state(self, service: str, key: str) -> bytes | None:
        """The blob saved under key, or None."""
        return self._state.get((service, key))

    async def delete_service(self, service: str) -> None:
        """Forget everything about a deleted service."""
        for k in [k for k in self._series if k[0] == service]:
            del self._series[k]
        for k in [k for k in self._state if k[0] == service]:
            del self._state[k]


class RedisStore:
    """HistoryStore on Redis: one sorted set per (service, indicator) scored by time, trimmed on append,
    with a TTL of the retention age so the history of a service nobody updates does not linger."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "ebbtide", retention: Retention | None = None) -> None:
        self._r = client
        self._prefix = prefix
        self.retention = retention or Retention()

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "ebbtide", retention: Retention | None = None, timeout_s: float = 2.0
    ) -> RedisStore:
        """Connect lazily to `redis://host:port/db` with short timeouts, so a dead server fails fast."""
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        return cls(client, prefix=prefix, retention=retention)

    def _series_key(self, service: str, indicator: str) -> str:
        return f"{self._prefix}:hist:{service}:{indicator}"

    def _state_key(self, service: str, key: str) -> str:
        return f"{self._prefix}:state:{service}:{key}"

    def _index_key(self, service: str) -> str:
        return f"{self._prefix}:keys:{service}"

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the server answers."""
        try:
            await self._r.ping()
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis: {err}") from err

    async def append(self, service: str, t: float, values: Mapping[str, float]) -> None:
        """Record one point per indicator at time t, trimming to the retention."""
        points = _finite_points(t, values)
        if not points:
            return
        ttl = math.ceil(self.retention.max_age_s)
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                for indicator, value in points.items():
                    key = self._series_key(service, indicator)
                    # repr() round-trips floats exactly; the value in the member keeps equal times apart.
                    pipe.zadd(key, {f"{t!r}:{value!r}": t})
                    pipe.zremrangebyscore(key, "-inf", f"({t - self.retention.max_age_s!r}")
                    pipe.zremrangebyrank(key, 0, -self.retention.max_points - 1)
                    pipe.expire(key, ttl)
                    pipe.sadd(self._index_key(service), key)
                pipe.expire(self._index_key(service), ttl)
                await pipe.execute()
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis append for {service}: {err}") from err

    async def range(self, service: str, indicator: str, start: float, end: float) -> list[Point]:
        """Points with start <= t <= end, oldest first."""
        try:
            key = self._series_key(service, indicator)
            members = await self._r.zrangebyscore(key, repr(start), repr(end))
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis range for {service}/{indicator}: {err}") from err
        out: list[Point] = []
        for m in members:
            t, _, v = (m.decode() if isinstance(m, bytes) else str(m)).partition(":")
            out.append((float(t), float(v)))
        return out

    async def save_state(self, service: str, key: str, state: bytes) -> None:
        """Store an opaque blob (kept as long as the series are)."""
        k = self._state_key(service, key)
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.set(k, state, ex=math.ceil(self.retention.max_age_s))
                pipe.sadd(self._index_key(service), k)
                await pipe.execute()
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis save_state for {service}: {err}") from err

    async def load_state(self, service: str, key: str) -> bytes | None:
        """The blob saved under key, or None."""
        try:
            value = await self._r.get(self._state_key(service, key))
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis load_state for {service}: {err}") from err
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    async def delete_service(self, service: str) -> None:
        """Forget everything about a deleted service."""
        index = self._index_key(service)
        try:
            keys = await self._r.smembers(index)
            await self._r.delete(index, *keys)
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis delete for {service}: {err}") from err

    async def close(self) -> None:
        """Close the connection pool."""
        await self._r.aclose()
