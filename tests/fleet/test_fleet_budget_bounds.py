"""Budgets across a fleet under faults: the bound with two processes, batches applied once
after timeouts, the last charges written at close, a bounded view, and persistence checked."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import dspy
import pytest
import redis
from _fleet_helpers import Connect, budget_manager, url_of
from pytest_redis.executor import RedisExecutor

from llm_server.core.budgets import (
    Budget,
    PeriodLimit,
    TenantBudgets,
    Usage,
    tenant_scope,
)
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import (
    BudgetExceededError,
    ConfigurationError,
    DeadlineExceededError,
)
from llm_server.core.reliability._budgets import period_key
from llm_server.fleet import RedisUsageCounters, check_persistence
from llm_server.models.manager import ModelManager
from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio


class Summarize(dspy.Signature):
    """Summarize the text in one sentence."""

    text: str = dspy.InputField()
    summary: str = dspy.OutputField()


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    with LocalProvider(latency_s=0.3) as local:  # calls overlap: all 50 are in flight at once
        yield local


def fleet_manager(provider: LocalProvider, tmp_path: Path, url: str, prefix: str) -> ModelManager:
    """One "process": each call's estimate is exactly $1 (100 tokens at $10,000 per million)."""
    return budget_manager(provider, tmp_path, url, prefix, input_per_million=0)


async def test_two_processes_admit_five_one_dollar_calls_against_five_dollars(
    provider: LocalProvider, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    managers = [fleet_manager(provider, tmp_path, redis_url, prefix) for _ in range(2)]
    backends = [m.reliable_backend(dspy.Predict(Summarize), "m") for m in managers]
    served = refused = 0
    decided_by: set[bool] = set()

    async def one(index: int) -> None:
        nonlocal served, refused
        with tenant_scope("acme"):
            try:
                await backends[index % 2].predict({"text": f"text number {index}"})
            except BudgetExceededError as error:
                decided_by.add(error.fleet)
                refused += 1
            else:
                served += 1

    try:
        async with anyio.create_task_group() as tasks:
            for index in range(50):
                tasks.start_soon(one, index)
        assert len(provider.requests) == served == 5  # not 5 per process: holds are the fleet's
        assert refused == 45
        assert decided_by == {True}  # every refusal was the fleet's decision
    finally:
        for manager in managers:
            await manager.aclose()


def periods(budget: Budget, key: str = "d20261130") -> tuple[PeriodLimit, ...]:
    return (PeriodLimit(key, time.time() + 3600, budget),)


BUSY_40_MS = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
while true do
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000000 + tonumber(now[2]) - start > 40000 then return 1 end
end
"""


def test_a_batch_timed_out_after_redis_applied_it_is_applied_once(
    killable_redis: RedisExecutor, connect: Connect
) -> None:
    connection = connect(url_of(killable_redis), timeout_s=0.01)
    counters = RedisUsageCounters(connection)  # no sync thread: this test flushes
    admin = redis.Redis(host=killable_redis.host, port=killable_redis.port, protocol=2)
    timed_out = 0
    try:
        for _ in range(100):
            counters.settle("acme", periods(Budget()), Usage(1, 100, 0.1), Usage())
            # Redis is busy for 40 ms (a script): the batch waits in its socket, the client
            # gives up after 10 ms, then Redis reads the batch and applies it anyway.
            busy = threading.Thread(target=admin.eval, args=(BUSY_40_MS, 0))
            busy.start()
            time.sleep(0.005)
            try:
                counters.flush()
            except redis.TimeoutError:
                timed_out += 1
            busy.join()
            while True:  # re-sent with its number until answered (as the sync thread does)
                try:
                    counters.flush()
                    break
                except redis.TimeoutError:
                    time.sleep(0.02)
        key = connection.key("budget", "acme", "d20261130")
        totals = admin.hgetall(key)
    finally:
        admin.close()
    assert timed_out >= 50  # most batches really met a timeout (a loaded machine may be late)
    assert int(totals[b"requests"]) == 100  # 0 double charges
    assert int(totals[b"tokens"]) == 10_000
    assert float(totals[b"cost_usd"]) == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("kind", "limit", "used", "more"),
    [
        ("requests", 3, Usage(3, 30, 0.03), Usage(1)),
        ("tokens", 300, Usage(1, 300, 0.01), Usage(0, 10, 0.0)),
        ("cost_usd", 0.5, Usage(1, 100, 0.5), Usage(0, 10, 0.01)),
    ],
)
async def test_the_fleets_budget_at_exactly_its_limit_refuses_the_next_reservation(
    connect: Connect, kind: str, limit: float, used: Usage, more: Usage
) -> None:
    counters = RedisUsageCounters(connect())  # no sync thread: this test flushes
    counters.settle("acme", periods(Budget()), used, Usage())
    counters.flush()
    at_limit = Budget(**{kind: limit})
    assert await counters.reserve("acme", periods(at_limit), more, (kind,)) == (0, kind, True)
    just_under = Budget(**{kind: limit + (1 if kind != "cost_usd" else 0.01)})
    assert await counters.reserve("acme", periods(just_under), more, (kind,)) is True
    await counters._conn.aclose()


@pytest.mark.parametrize("shared", [False, True], ids=["one process", "fleet"])
async def test_a_hung_model_call_holds_its_reservation_no_longer_than_the_request_deadline(
    tmp_path: Path, redis_url: str, prefix: str, shared: bool
) -> None:
    with LocalProvider() as provider:
        provider.add_fault("hang")  # no answer, the socket kept open
        manager = budget_manager(
            provider,
            tmp_path,
            redis_url if shared else None,
            prefix,
            input_per_million=0,
            budget_usd=1,  # one call's estimate: $1
            extra={"timeout_s": 30},  # only the request deadline can end the call in time
            request_deadline_s=0.5,
        )
        backend = manager.reliable_backend(dspy.Predict(Summarize), "m")
        try:
            with tenant_scope("acme"):
                hung = anyio.Event()

                async def hang() -> None:
                    with pytest.raises(DeadlineExceededError):
                        await backend.predict({"text": "a call that never gets an answer"})
                    hung.set()

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(hang)
                    await anyio.sleep(0.2)
                    with pytest.raises(BudgetExceededError, match="in flight"):
                        await backend.predict({"text": "no room while the first holds $1"})
                    started = time.monotonic()
                    await hung.wait()
                    ended_in = time.monotonic() - started
                assert ended_in < 1.0  # at its 0.5 s deadline, not the 30 s HTTP timeout
                day = period_key("day", time.time())[0]
                assert manager.budgets.held("acme", day) == Usage()  # released as it ended
                if shared:
                    assert manager.fleet is not None
                    client = manager.fleet.connection.client
                    held_key = manager.fleet.connection.key("budget", "acme", day, "held")
                    deadline = time.monotonic() + 2  # the release is written every 100 ms
                    while client.hgetall(held_key):
                        assert time.monotonic() < deadline, client.hgetall(held_key)
                        await anyio.sleep(0.02)
                provider.clear_faults()
                answer = await backend.predict({"text": "the $1 is free again"})
                assert answer.content
        finally:
            await manager.aclose()


async def test_close_right_after_a_charge_writes_it(connect: Connect, redis_url: str) -> None:
    connection = connect()
    counters = RedisUsageCounters(connection)
    connection.start()
    counters.settle("acme", periods(Budget()), Usage(1, 7, 0.5), Usage())
    connection.close()
    reader = redis.Redis.from_url(redis_url, protocol=2)
    try:
        totals = reader.hgetall(connection.key("budget", "acme", "d20261130"))
    finally:
        reader.close()
    assert totals[b"requests"] == b"1"
    assert float(totals[b"cost_usd"]) == 0.5


async def test_charges_unwritten_at_shutdown_are_logged_with_their_totals(
    killable_redis: RedisExecutor, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    from llm_server.fleet import Fleet

    fleet = Fleet(connect(url_of(killable_redis)))
    with killable_redis.stopped():
        fleet.usage.settle("acme", periods(Budget()), Usage(2, 300, 1.25), Usage())
        assert fleet.describe()["charges_unwritten"] == 1  # what /models shows
        with caplog.at_level(logging.ERROR, logger="llm_server.fleet"):
            fleet.close()
    lost = [r.getMessage() for r in caplog.records if "not written to Redis" in r.getMessage()]
    assert lost, caplog.text
    assert "2 requests, 300 tokens, $1.250000 in all" in lost[0]


async def test_three_thousand_random_tenants_do_not_grow_the_view_without_bound(
    connect: Connect,
) -> None:
    counters = RedisUsageCounters(connect(), max_slots=500, idle_s=0.2)
    budgets = TenantBudgets(
        {"*": {"day": Budget(requests=10), "month": Budget(requests=99)}}, counters=counters
    )
    for _ in range(3000):
        await budgets.usage(uuid.uuid4().hex)  # each reads a day and a month
    assert counters.slots == 500  # the least recently used went
    await anyio.sleep(0.3)
    counters.refresh()
    assert counters.slots == 0  # and every slot expires once unused
    await counters._conn.aclose()


async def test_a_dead_processs_holds_are_dropped_by_the_next_reservation(
    connect: Connect,
) -> None:
    budget = Budget(requests=1)
    dead, alive = RedisUsageCounters(connect()), RedisUsageCounters(connect())
    assert await dead.reserve("acme", periods(budget), Usage(1), ("requests",)) is True
    refused = await alive.reserve("acme", periods(budget), Usage(1), ("requests",))
    assert refused == (0, "requests", False)  # held by a call in flight, not spent
    dead_id = dead._conn.process_id
    dead._conn.client.zrem(dead._conn.key("members"), dead_id)  # it stopped beating
    assert await alive.reserve("acme", periods(budget), Usage(1), ("requests",)) is True
    for counters in (dead, alive):
        await counters._conn.aclose()


def test_redis_without_persistence_is_refused_when_required(
    killable_redis: RedisExecutor, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    connection = connect(url_of(killable_redis))
    client = connection.client
    saved = client.config_get("save")["save"], client.config_get("appendonly")["appendonly"]
    try:
        client.config_set("save", "")
        client.config_set("appendonly", "no")
        with pytest.raises(ConfigurationError, match="has no persistence"):
            check_persistence(connection, required=True)
        with caplog.at_level(logging.ERROR, logger="llm_server.fleet"):
            assert check_persistence(connection, required=False) is False
        assert "resets every tenant's budget usage to zero" in caplog.text
        client.config_set("appendonly", "yes")
        assert check_persistence(connection, required=True) is True
    finally:
        client.config_set("save", saved[0])
        client.config_set("appendonly", saved[1])


def test_fleet_settings_check_persistence_at_startup(
    killable_redis: RedisExecutor, tmp_path: Path, prefix: str
) -> None:
    admin = redis.Redis(host=killable_redis.host, port=killable_redis.port, protocol=2)
    saved = admin.config_get("save")["save"], admin.config_get("appendonly")["appendonly"]
    admin.config_set("save", "")
    admin.config_set("appendonly", "no")
    values: dict[str, Any] = {
        "otel_enabled": False,
        "redis_url": url_of(killable_redis),
        "redis_prefix": prefix,
        "redis_persistence_required": True,
    }
    try:
        from llm_server.fleet import Fleet

        with pytest.raises(ConfigurationError, match="LLM_SERVER_REDIS_PERSISTENCE_REQUIRED"):
            Fleet.from_settings(FrameworkSettings(**values))
    finally:
        admin.config_set("save", saved[0])
        admin.config_set("appendonly", saved[1])
        admin.close()


async def test_while_redis_is_down_each_process_keeps_the_bound_on_its_own(
    provider: LocalProvider, tmp_path: Path, killable_redis: RedisExecutor, prefix: str
) -> None:
    with killable_redis.stopped():
        manager = fleet_manager(provider, tmp_path, url_of(killable_redis), prefix)
        assert manager.fleet is not None
        assert manager.fleet.connection.fallback
        backend = manager.reliable_backend(dspy.Predict(Summarize), "m")
        outcomes: list[str] = []

        async def one(index: int) -> None:
            with tenant_scope("acme"):
                try:
                    await backend.predict({"text": f"text number {index}"})
                except BudgetExceededError as error:
                    outcomes.append("local refusal" if not error.fleet else "fleet refusal")
                else:
                    outcomes.append("served")

        try:
            async with anyio.create_task_group() as tasks:
                for index in range(50):
                    tasks.start_soon(one, index)
            assert outcomes.count("served") == len(provider.requests) == 5
            assert outcomes.count("local refusal") == 45
        finally:
            await manager.aclose()


async def test_budgets_on_a_redis_without_persistence_log_an_error_at_startup(
    killable_redis: RedisExecutor,
    tmp_path: Path,
    prefix: str,
    provider: LocalProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = redis.Redis(host=killable_redis.host, port=killable_redis.port, protocol=2)
    saved = admin.config_get("save")["save"], admin.config_get("appendonly")["appendonly"]
    admin.config_set("save", "")
    admin.config_set("appendonly", "no")
    try:
        with caplog.at_level(logging.ERROR, logger="llm_server.fleet"):
            manager = fleet_manager(provider, tmp_path, url_of(killable_redis), prefix)
        await manager.aclose()
    finally:
        admin.config_set("save", saved[0])
        admin.config_set("appendonly", saved[1])
        admin.close()
    assert "resets every tenant's budget usage to zero" in caplog.text


async def test_a_reservation_whose_reply_was_lost_is_released(
    killable_redis: RedisExecutor, connect: Connect
) -> None:
    connection = connect(url_of(killable_redis), timeout_s=0.01)
    counters = RedisUsageCounters(connection)
    admin = redis.Redis(host=killable_redis.host, port=killable_redis.port, protocol=2)
    held = connection.key("budget", "acme", "d20261130") + ":held"
    mine = f"{connection.process_id}:r".encode()
    try:
        await connection.async_client().ping()  # connected: the reservation itself is late
        busy = threading.Thread(target=admin.eval, args=(BUSY_40_MS, 0))
        busy.start()
        await anyio.sleep(0.005)
        verdict = await counters.reserve("acme", periods(Budget(5)), Usage(1), ("requests",))
        busy.join()
        assert verdict is None  # timed out: the call is decided locally
        await anyio.sleep(0.05)
        assert admin.hget(held, mine) == b"1"  # but Redis did hold it
        for _ in range(50):  # the sync thread's next batch releases it
            try:
                counters.flush()
                break
            except redis.TimeoutError:
                await anyio.sleep(0.02)
        assert admin.hget(held, mine) is None
    finally:
        admin.close()
        await connection.aclose()
