"""Rate limits shared through a real redis-server, and their per-process fallback."""

from __future__ import annotations

import time

import anyio
import pytest
from _fleet_helpers import Connect, url_of
from pytest_redis.executor import RedisExecutor

from llm_server.core.errors import RateLimitExceededError
from llm_server.core.rate_limit import RateLimiter
from llm_server.fleet import FleetConnection, RedisLimitCounters

pytestmark = pytest.mark.anyio


def limiter_in(connection: FleetConnection, **options: object) -> RateLimiter:
    counters = RedisLimitCounters(connection)
    connection.start()
    return RateLimiter("m", counters=counters, **options)  # type: ignore[arg-type]


async def test_processes_share_one_limit(connect: Connect) -> None:
    connections = [connect() for _ in range(4)]
    limiters = [limiter_in(c, requests_per_minute=6) for c in connections]
    granted, refused = 0, []
    for i in range(12):
        try:
            grant = await limiters[i % 4].acquire()
        except RateLimitExceededError as error:
            refused.append(error)
        else:
            assert grant.fleet
            granted += 1
    assert granted == 6  # not 4 x 6
    assert all(error.fleet for error in refused)
    assert "the fleet's rate_limit" in refused[0].message
    for connection in connections:
        await connection.aclose()


async def test_a_take_is_one_round_trip_and_give_backs_are_batched(
    connect: Connect, private_redis: RedisExecutor
) -> None:
    connection = connect()
    limit = RateLimiter(
        "m", tokens_per_minute=10_000, counters=RedisLimitCounters(connection)
    )  # no sync thread: nothing is written behind our back
    stats = connection.client.info("commandstats")
    before = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    grants = [await limit.acquire(1000) for _ in range(10)]
    stats = connection.client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == before + 10  # one per call
    with pytest.raises(RateLimitExceededError):
        await limit.acquire(1000)
    for grant in grants:
        limit.settle(grant, sent=True, tokens_used=100)  # queued, not written
    limit.counters.flush()  # type: ignore[attr-defined]  # what the sync thread does
    key = connection.key("rl", "m")
    fields = connection.client.hgetall(key)
    tokens = sum(int(v) for k, v in fields.items() if k.startswith(b"t"))
    assert tokens == 10 * 100
    await limit.acquire(1000)  # the settled tokens made room
    await connection.aclose()


async def test_without_redis_each_process_gets_its_share(
    killable_redis: RedisExecutor, connect: Connect
) -> None:
    connections = [connect(url_of(killable_redis)) for _ in range(2)]
    limiters = [limiter_in(c, requests_per_minute=10) for c in connections]
    deadline = time.monotonic() + 3
    while any(c.members < 2 for c in connections):  # each saw the other alive
        assert time.monotonic() < deadline
        await anyio.sleep(0.05)
    for connection in connections:
        await connection.aclose()
    with killable_redis.stopped():
        grants = [await limiters[0].acquire() for _ in range(5)]  # half: two were alive
        assert connections[0].fallback
        assert not any(grant.fleet for grant in grants)
        with pytest.raises(RateLimitExceededError, match="this process's rate_limit") as caught:
            await limiters[0].acquire()
        assert caught.value.fleet is False
    await connections[0].aclose()


async def test_a_high_limit_is_served_from_leases_and_unused_capacity_returns(
    connect: Connect,
) -> None:
    connection = connect()
    counters = RedisLimitCounters(connection)  # no sync thread: flush by hand
    limit = RateLimiter("m", requests_per_minute=100_000, counters=counters)
    for _ in range(100):
        await limit.acquire()
    assert counters.round_trips == 2  # a lease covers 50 calls
    key = connection.key("rl", "m")

    def counted() -> int:
        fields = connection.client.hgetall(key)
        return sum(int(v) for k, v in fields.items() if k.startswith(b"r"))

    await limit.acquire()  # the third lease: 50 counted, 1 used
    assert counted() == 150
    await anyio.sleep(1.05)  # the lease ran out
    counters.flush()  # what the sync thread does every 100 ms
    assert counted() == 101
    await connection.aclose()


async def test_a_small_limit_gets_no_lease(connect: Connect) -> None:
    connection = connect()
    counters = RedisLimitCounters(connection)
    limit = RateLimiter("m", requests_per_minute=30, counters=counters)
    for _ in range(5):
        await limit.acquire()
    assert counters.round_trips == 5  # 30/min: one call per round trip, nothing held back
    await connection.aclose()
