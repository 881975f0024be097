"""Shared breakers under Redis faults: a slow Redis, a silent one, a held probe lease.

Redis is reached through ``RedisProxy`` (tests/fleet/_redis_proxy.py), which adds latency or
silence in front of the private redis-server. Each test pins an invariant that failed before
the request path stopped waiting on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis
from _fleet_helpers import Connect
from _redis_proxy import RedisProxy
from pytest_redis.executor import RedisExecutor

from llm_server.core.circuit_breaker import BreakerState, CircuitBreaker
from llm_server.core.errors import CircuitOpenError, ProviderUnavailableError
from llm_server.fleet import FleetConnection, RedisBreakerStore

OPEN, CLOSED, HALF_OPEN = BreakerState.OPEN, BreakerState.CLOSED, BreakerState.HALF_OPEN


@pytest.fixture
def proxy(private_redis: RedisExecutor) -> Iterator[RedisProxy]:
    """A proxy in front of the private server (no latency until a test sets it)."""
    made = RedisProxy(private_redis.host, private_redis.port).start()
    yield made
    made.close()


def breaker_in(connection: FleetConnection, **options: Any) -> CircuitBreaker:
    options.setdefault("failure_threshold", 5)
    options.setdefault("reset_timeout", 0.2)
    breaker = CircuitBreaker(name="m", store=RedisBreakerStore(connection), **options)
    connection.start()
    return breaker


def evalshas(admin: redis.Redis) -> int:
    stats: dict[str, Any] = admin.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def eventually(check: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await anyio.sleep(0.01)


@pytest.mark.anyio
# a 3 s storm of 40 callers per latency: the second latency is a slow (fault) run
@pytest.mark.parametrize("latency_s", [0.03, pytest.param(0.08, marks=pytest.mark.slow)])
async def test_a_failure_storm_on_a_slow_redis_never_stalls_the_event_loop(
    latency_s: float, proxy: RedisProxy, connect: Connect
) -> None:
    proxy.latency_s = latency_s
    # a timeout above the latency: Redis stays in use (the case that blocked the loop)
    connection = connect(proxy.url, timeout_s=0.25)
    breaker = breaker_in(connection)
    lags: list[float] = []
    stop = anyio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            expected = loop.time() + 0.005
            await asyncio.sleep(0.005)
            lags.append(loop.time() - expected)

    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise ProviderUnavailableError("503 from the provider")

    async def caller() -> None:
        deadline = time.monotonic() + 3.0  # many open -> half-open -> open rounds
        while time.monotonic() < deadline:
            with contextlib.suppress(ProviderUnavailableError, CircuitOpenError):
                await breaker.call(failing)
            await asyncio.sleep(0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        async with anyio.create_task_group() as callers:
            for _ in range(40):
                callers.start_soon(caller)
        stop.set()
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)]
    median = statistics.median(lags)
    assert p99 < 0.020, f"event-loop lag p99 {p99 * 1000:.1f} ms (median {median * 1000:.1f})"
    # and the fleet was told: Redis holds the breaker's trips
    assert connection.client.hget(connection.key("cb", "m"), "g") not in (None, b"0")
    await connection.aclose()


@pytest.mark.anyio
async def test_refusals_while_another_process_holds_the_probe_cost_no_round_trips(
    connect: Connect, private_redis: RedisExecutor
) -> None:
    holder = breaker_in(connect(), reset_timeout=0.2, probe_lease_s=5)
    waiting_connection = connect()
    waiting = breaker_in(waiting_connection, reset_timeout=0.2, probe_lease_s=5)
    for _ in range(5):
        with pytest.raises(ProviderUnavailableError):
            holder.call_sync(_fail)
    await eventually(lambda: waiting.state is OPEN)
    await anyio.sleep(0.25)
    ticket = await anyio.to_thread.run_sync(holder.admit)  # holds the fleet's only probe
    admin = redis.Redis(host=private_redis.host, port=private_redis.port, protocol=2)
    before = evalshas(admin)
    refused = 0
    for _ in range(300):
        try:
            await waiting.call(_succeed)
        except CircuitOpenError:
            refused += 1
        await anyio.sleep(0.001)
    spent = evalshas(admin) - before
    assert refused == 300
    assert waiting._store.remembered_refusals >= 290  # type: ignore[attr-defined]
    # one lease request, plus each process's once-a-second re-read of the shared state
    assert spent <= 5, f"{spent} EVALSHAs for 300 refusals"
    holder.settle(ticket, None)
    await eventually(lambda: waiting.state is CLOSED)
    admin.close()
    await waiting_connection.aclose()


def test_a_verdict_that_meets_a_silent_redis_is_written_when_it_answers(
    proxy: RedisProxy, connect: Connect
) -> None:
    prober = breaker_in(connect(proxy.url), reset_timeout=0.2, probe_lease_s=30)
    other = breaker_in(connect(), reset_timeout=0.2, probe_lease_s=30)
    for _ in range(5):
        with pytest.raises(ProviderUnavailableError):
            prober.call_sync(_fail)
    time.sleep(0.25)
    ticket = prober.admit()  # the fleet's only probe, leased for 30 s
    proxy.silence()
    prober.settle(ticket, None)  # the provider answered; the verdict meets a timeout
    time.sleep(0.3)
    proxy.speak()
    deadline = time.monotonic() + 5  # not the lease's 30 s
    while other.state is not CLOSED:
        assert time.monotonic() < deadline, f"still {other.state} after the verdict"
        time.sleep(0.02)
    other.call_sync(_succeed_sync)
    deadline = time.monotonic() + 5
    while prober.state is not CLOSED:
        assert time.monotonic() < deadline, f"prober still {prober.state}"
        time.sleep(0.02)


@pytest.mark.anyio
async def test_a_verdict_queued_on_the_event_loop_survives_a_slow_redis(
    proxy: RedisProxy, connect: Connect
) -> None:
    connection = connect(proxy.url)
    prober = breaker_in(connection, reset_timeout=0.2, probe_lease_s=30)
    other = breaker_in(connect(), reset_timeout=0.2, probe_lease_s=30)
    for _ in range(5):
        with pytest.raises(ProviderUnavailableError):
            await prober.call(_fail_async)
    await eventually(lambda: other.state is OPEN)
    await anyio.sleep(0.25)
    ticket = None
    deadline = time.monotonic() + 5
    while ticket is None:  # the first call asks the writer thread for a lease; a later one has it
        assert time.monotonic() < deadline, "no probe lease"
        try:
            ticket = prober.admit()
        except CircuitOpenError:
            await anyio.sleep(0.01)
    proxy.latency_s = 0.3  # every command now times out (50 ms)
    prober.settle(ticket, None)  # the probe succeeded; the verdict's first write times out
    await anyio.sleep(0.5)
    proxy.latency_s = 0.0
    await eventually(lambda: other.state is CLOSED)  # not the lease's 30 s
    await connection.aclose()


def _fail() -> None:
    raise ProviderUnavailableError("503 from the provider")


def _succeed_sync() -> None:
    return None


async def _fail_async() -> None:
    raise ProviderUnavailableError("503 from the provider")


async def _succeed() -> None:
    return None


@pytest.mark.anyio
async def test_transitions_made_in_worker_threads_never_stall_the_event_loop(
    proxy: RedisProxy, connect: Connect
) -> None:
    """Sync programs fail in worker threads (no event loop there) while the loop's own calls
    meet the open breaker: a transition decided in a thread must not hold the breaker's lock
    for a Redis round trip, or every call on the loop waits behind it."""
    proxy.latency_s = 0.08
    connection = connect(proxy.url, timeout_s=0.25)
    breaker = breaker_in(connection)
    lags: list[float] = []
    stop = anyio.Event()
    storm_ends = time.monotonic() + 3.0  # many open -> half-open -> open rounds

    def sync_caller() -> None:
        def failing() -> None:
            time.sleep(0.01)
            raise ProviderUnavailableError("503 from the provider")

        while time.monotonic() < storm_ends:
            with contextlib.suppress(ProviderUnavailableError, CircuitOpenError):
                breaker.call_sync(failing)
            time.sleep(0.005)

    async def loop_caller() -> None:
        while time.monotonic() < storm_ends:
            with contextlib.suppress(ProviderUnavailableError, CircuitOpenError):
                await breaker.call(_fail_async)
            await asyncio.sleep(0.005)

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            expected = loop.time() + 0.005
            await asyncio.sleep(0.005)
            lags.append(loop.time() - expected)

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        async with anyio.create_task_group() as callers:
            for _ in range(8):
                callers.start_soon(anyio.to_thread.run_sync, sync_caller)
            for _ in range(8):
                callers.start_soon(loop_caller)
        stop.set()
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)]
    median = statistics.median(lags)
    assert p99 < 0.020, f"event-loop lag p99 {p99 * 1000:.1f} ms (median {median * 1000:.1f})"
    # the threads' transitions still reached the fleet
    deadline = time.monotonic() + 2
    while int(connection.client.hget(connection.key("cb", "m"), "g") or 0) < 2:
        assert time.monotonic() < deadline, "no transition reached Redis"
        await anyio.sleep(0.02)
    await connection.aclose()
