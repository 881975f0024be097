"""Tenants' usage in Redis: read once, charged in batches, never lost while Redis is down."""

from __future__ import annotations

import time

import anyio
import pytest
from _fleet_helpers import Connect, url_of
from pytest_redis.executor import RedisExecutor

from llm_server.core.budgets import Usage
from llm_server.fleet import RedisUsageCounters

pytestmark = pytest.mark.anyio


async def wait_until(check: object, timeout_s: float = 6.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await anyio.sleep(0.05)


async def test_processes_see_each_others_charges_within_a_second(connect: Connect) -> None:
    connections = [connect() for _ in range(2)]
    first, second = (RedisUsageCounters(c) for c in connections)
    for connection in connections:
        connection.start()
    assert await second.usage("acme", "d20261130") == (Usage(), True)  # read once: nothing
    first.charge("acme", "d20261130", Usage(2, 300, 0.25), time.time() + 3600)
    assert (await first.usage("acme", "d20261130"))[0] == Usage(2, 300, 0.25)  # at once here
    deadline = time.monotonic() + 2
    while (await second.usage("acme", "d20261130"))[0] != Usage(2, 300, 0.25):
        assert time.monotonic() < deadline, "the second process never saw the charge"
        await anyio.sleep(0.05)
    for connection in connections:
        await connection.aclose()


async def test_charges_made_while_redis_is_down_are_written_when_it_returns(
    killable_redis: RedisExecutor, connect: Connect
) -> None:
    connection = connect(url_of(killable_redis))
    counters = RedisUsageCounters(connection)
    connection.start()
    await counters.usage("acme", "d1")
    with killable_redis.stopped():
        counters.charge("acme", "d1", Usage(1, 10, 0.5), time.time() + 3600)
        await wait_until(lambda: connection.fallback)
        used, shared = await counters.usage("acme", "d1")
        assert used == Usage(1, 10, 0.5)  # still counted here
        assert shared is False
    await wait_until(lambda: not connection.fallback)
    key = connection.key("budget", "acme", "d1")
    await wait_until(lambda: connection.client.hget(key, "requests") == b"1")
    assert float(connection.client.hget(key, "cost_usd")) == 0.5
    await connection.aclose()
