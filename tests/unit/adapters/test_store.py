"""History store: the same behaviour from MemoryStore and RedisStore (against a real redis-server)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
from redis import asyncio as aioredis

from adapters.store import HistoryStore, MemoryStore, RedisStore, Retention, StoreUnavailable
from tests.unit.conftest import RedisServer

SMALL = Retention(max_points=5, max_age_s=100.0)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[HistoryStore]:
    """Each behaviour test runs on both stores."""
    if request.param == "memory":
        yield MemoryStore(SMALL)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_store = RedisStore.from_url(server.url, retention=SMALL)
    try:
        yield redis_store
    finally:
        await redis_store.close()


class TestBehaviour:
    async def test_append_and_range(self, store: HistoryStore) -> None:
        for t in (10.0, 20.0, 30.0):
            await store.append("ns/a", t, {"request_rate": t / 10, "prompt_token_rate": t * 100})
        assert await store.range("ns/a", "request_rate", 15.0, 30.0) == [(20.0, 2.0), (30.0, 3.0)]
        assert await store.range("ns/a", "prompt_token_rate", 0.0, 10.0) == [(10.0, 1000.0)]
        assert await store.range("ns/b", "request_rate", 0.0, 100.0) == []

    async def test_floats_round_trip_exactly(self, store: HistoryStore) -> None:
        await store.append("s", 1.0000000001, {"x": 0.1 + 0.2})
        assert await store.range("s", "x", 0.0, 2.0) == [(1.0000000001, 0.1 + 0.2)]

    async def test_retention_by_count(self, store: HistoryStore) -> None:
        for i in range(8):
            await store.append("s", float(i), {"x": float(i)})
        assert [t for t, _ in await store.range("s", "x", -1.0, 1e9)] == [3.0, 4.0, 5.0, 6.0, 7.0]

    async def test_retention_by_age(self, store: HistoryStore) -> None:
        for t in (0.0, 60.0, 120.0, 180.0):
            await store.append("s", t, {"x": 1.0})
        assert [t for t, _ in await store.range("s", "x", -1.0, 1e9)] == [120.0, 180.0]

    async def test_non_finite_values_are_skipped(self, store: HistoryStore) -> None:
        await store.append("s", 1.0, {"x": math.nan, "y": math.inf, "z": 2.0})
        assert await store.range("s", "x", 0.0, 2.0) == []
        assert await store.range("s", "z", 0.0, 2.0) == [(1.0, 2.0)]

    async def test_state_and_delete(self, store: HistoryStore) -> None:
        assert await store.load_state("s", "policy") is None
        await store.save_state("s", "policy", b'{"kind": "ebbtide"}')
        await store.append("s", 1.0, {"x": 1.0})
        assert await store.load_state("s", "policy") == b'{"kind": "ebbtide"}'
        await store.delete_service("s")
        assert await store.load_state("s", "policy") is None
        assert await store.range("s", "x", 0.0, 2.0) == []


class TestRedis:
    async def test_a_new_client_reads_the_same_history(self, redis_server: RedisServer) -> None:
        first = RedisStore.from_url(redis_server.url)
        await first.append("ns/a", 5.0, {"request_rate": 1.5})
        await first.save_state("ns/a", "policy", b"\x00state")
        await first.close()
        second = RedisStore.from_url(redis_server.url)
        try:
            assert await second.range("ns/a", "request_rate", 0.0, 10.0) == [(5.0, 1.5)]
            assert await second.load_state("ns/a", "policy") == b"\x00state"
        finally:
            await second.close()

    async def test_keys_expire_with_the_retention_age(self, redis_server: RedisServer) -> None:
        s = RedisStore.from_url(redis_server.url, prefix="t", retention=Retention(max_age_s=3600.0))
        await s.append("svc", 1.0, {"x": 1.0})
        raw = aioredis.Redis.from_url(redis_server.url)
        try:
            ttl = await raw.ttl("t:hist:svc:x")
            assert 3500 < ttl <= 3600
        finally:
            await raw.aclose()
            await s.close()

    async def test_unavailable_when_the_server_is_down(self, redis_server: RedisServer) -> None:
        s = RedisStore.from_url(redis_server.url, timeout_s=0.5)
        await s.append("svc", 1.0, {"x": 1.0})
        redis_server.stop()
        try:
            with pytest.raises(StoreUnavailable):
                await s.append("svc", 2.0, {"x": 2.0})
            with pytest.raises(StoreUnavailable):
                await s.range("svc", "x", 0.0, 10.0)
            with pytest.raises(StoreUnavailable):
                await s.load_state("svc", "policy")
            with pytest.raises(StoreUnavailable):
                await s.ping()
        finally:
            await s.close()

    async def test_recovers_when_the_server_returns(self, redis_server: RedisServer) -> None:
        s = RedisStore.from_url(redis_server.url, timeout_s=0.5)
        redis_server.stop()
        try:
            with pytest.raises(StoreUnavailable):
                await s.append("svc", 1.0, {"x": 1.0})
            redis_server.start()
            await s.append("svc", 2.0, {"x": 2.0})
            assert await s.range("svc", "x", 0.0, 10.0) == [(2.0, 2.0)]
        finally:
            await s.close()


def test_retention_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_points"):
        Retention(max_points=0)
    with pytest.raises(ValueError, match="max_age_s"):
        Retention(max_age_s=0.0)
