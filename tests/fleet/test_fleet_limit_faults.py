"""Shared rate limits under Redis faults: late replies, cancelled takes, lost counters, and
windows that cross a boundary on Redis's clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from _fleet_helpers import Connect
from _redis_proxy import RedisProxy
from _redis_servers import port_of, redis_servers
from pytest_redis.executor import RedisExecutor

from llm_server.core.rate_limit import RateLimiter
from llm_server.fleet import FleetConnection, RedisLimitCounters, _scripts

pytestmark = pytest.mark.anyio


@pytest.fixture
def proxy(private_redis: RedisExecutor) -> Iterator[RedisProxy]:
    made = RedisProxy(private_redis.host, private_redis.port).start()
    yield made
    made.close()


def evalshas(admin: redis.Redis) -> int:
    stats: dict[str, Any] = admin.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def counted(connection: FleetConnection, key: str = "m") -> dict[str, int]:
    """The limiter's counters in Redis, field -> value."""
    raw = connection.client.hgetall(connection.key("rl", key))
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_no_capacity_leaks_after_100_timed_out_or_cancelled_takes(
    connect: Connect, tmp_path: Path
) -> None:
    with redis_servers(tmp_path, 1) as (admin,):  # a server of its own: exact command counts
        proxy = RedisProxy("127.0.0.1", port_of(admin)).start()
        try:
            await _no_leak(connect(proxy.url, timeout_s=0.5), proxy, admin)
        finally:
            proxy.close()


async def _no_leak(connection: FleetConnection, proxy: RedisProxy, admin: redis.Redis) -> None:
    counters = RedisLimitCounters(connection)
    connection.start()
    # 100 open connections that know the script: each take below uses one (a new one's
    # handshake would time out, and a take that timed out closes its connection)
    proxy.latency_s = 0.01
    async with anyio.create_task_group() as group:
        for _ in range(100):
            # (a small limit: no lease, every take is a round trip on a connection of its own)
            group.start_soon(counters.take, "warm-up", 1, 0, (20, 0))
    before = evalshas(admin)
    caps = (10_000, 0)

    # a key per take: takes of one key and loop wait for the one in flight (its lease), so
    # that every take reaches Redis each has its own (each asks for a lease: 50 calls' worth)
    keys = [f"m{index}" for index in range(100)]

    async def timed_out(key: str) -> None:
        _wait, window, _fleet = await counters.take(key, 1, 0, caps)
        assert window >= 0  # decided locally, not by the fleet

    async def cancelled(key: str) -> None:
        with anyio.move_on_after(0.01):
            await counters.take(key, 1, 0, caps)

    proxy.latency_s = 0.0
    released = counters.released
    proxy.reply_latency_s = 1.0  # Redis counts every take; its answer comes too late
    async with anyio.create_task_group() as group:
        for index in range(100):
            group.start_soon(timed_out if index % 2 else cancelled, keys[index])
    assert counters.released - released == 100
    assert evalshas(admin) - before >= 100, connection.describe()  # every take was counted
    proxy.reply_latency_s = 0.0
    deadline = time.monotonic() + 5
    while leaked := {k: c for k in keys if any((c := counted(connection, k)).values())}:
        assert time.monotonic() < deadline, f"leaked: {leaked}"
        await anyio.sleep(0.05)
    await connection.aclose()


async def test_a_take_on_a_slow_redis_is_decided_locally_never_raised(
    proxy: RedisProxy, connect: Connect
) -> None:
    connection = connect(proxy.url)
    limiter = RateLimiter("m", counters=RedisLimitCounters(connection), requests_per_minute=60)
    connection.start()
    proxy.latency_s = 0.3
    grant = await limiter.acquire()  # no exception: this one call is decided locally
    assert not grant.fleet
    await connection.aclose()


async def test_counters_never_go_below_zero_after_redis_lost_them(connect: Connect) -> None:
    connection = connect()
    counters = RedisLimitCounters(connection)
    caps = (0, 10_000)  # tokens per minute; calls this size get no lease
    wait, window, _ = await counters.take("m", 1, 500, caps)
    assert wait == 0
    connection.client.delete(connection.key("rl", "m"))  # Redis lost its data
    await counters.take("m", 1, 400, caps)  # counting starts again: 400 tokens
    counters.give_back("m", window, 0, 500)  # the first call used nothing: all 500 back
    counters.flush()
    assert counted(connection)[f"t{-window - 1}"] == 0  # not -100
    await connection.aclose()


def test_a_window_counts_the_previous_one_across_its_boundary(connect: Connect) -> None:
    # the script on Redis's clock with 1 s windows (a minute is too long to wait for)
    connection = connect()
    script = connection.client.register_script(_scripts.LIMIT_TAKE)
    keys = [connection.key("rl", "w"), connection.key("rl", "w:g"), connection.key("rl", "w:gd")]

    def take() -> int:
        reply = script(keys=keys, args=[1000, 1, 0, 10, 0, 1, 0])
        return int(reply[0])

    def until_next_window() -> None:
        _seconds, micros = connection.client.time()
        time.sleep(1 - micros / 1_000_000 + 0.01)

    until_next_window()
    assert [take() for _ in range(5)] == [0] * 5  # half the limit in window N
    until_next_window()
    granted = 0
    while take() == 0:  # in window N+1, ~5 are still carried over from window N
        granted += 1
    assert 4 <= granted <= 6, granted
