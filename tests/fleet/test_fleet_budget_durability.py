"""A tenant's budget across a Redis restart, and charges made while Redis is down.

budgets.md promises: with AOF on, usage survives a restart (without persistence it resets to
zero and startup logs an error); charges made while Redis is unreachable are kept and written
when it answers again. Each test runs against a redis-server of its own on a free port.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import dspy
import pytest
import redis
from _fleet_helpers import budget_manager, url_of
from _redis_servers import free_port, wait_for
from pytest_redis.executor import RedisExecutor

from llm_server.core.budgets import Usage, tenant_scope
from llm_server.core.errors import BudgetExceededError
from llm_server.models.manager import ModelManager
from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio


class Summarize(dspy.Signature):
    """Summarize the text in one sentence."""

    text: str = dspy.InputField()
    summary: str = dspy.OutputField()


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    with LocalProvider(latency_s=0.2) as local:  # concurrent calls overlap
        yield local


def manager_for(
    provider: LocalProvider, tmp_path: Path, url: str, prefix: str = "durability"
) -> ModelManager:
    """One "process" with a $5/day budget for tenant acme; a token costs $0.01 both ways, so
    each call's estimate (prompt + 100 max tokens) is over $1 and its real cost over $0.10."""
    return budget_manager(provider, tmp_path, url, prefix, input_per_million=10_000)


class RestartableRedis:
    """A redis-server on a fixed free port and data folder that can be shut down and started
    again, with AOF on or every kind of persistence off."""

    def __init__(self, folder: Path, *, appendonly: bool) -> None:
        self.port = free_port()
        self.folder = folder
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        admin = redis.Redis(host="127.0.0.1", port=self.port, protocol=2)
        try:
            wait_for(admin)
            while admin.info("persistence").get("loading"):  # the AOF is read back first
                time.sleep(0.02)
        finally:
            admin.close()

    def shutdown(self) -> None:
        """``SHUTDOWN`` as an operator would (AOF is synced), then wait for the process."""
        assert self.process is not None
        admin = redis.Redis(host="127.0.0.1", port=self.port, protocol=2)
        try:
            admin.shutdown()
        except redis.ConnectionError:
            pass
        finally:
            admin.close()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextmanager
def restartable_redis(folder: Path, *, appendonly: bool) -> Iterator[RestartableRedis]:
    server = RestartableRedis(folder, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def calls(manager: ModelManager, count: int) -> tuple[int, list[BudgetExceededError]]:
    """``count`` concurrent calls of tenant acme: how many were served, and the refusals."""
    backend = manager.reliable_backend(dspy.Predict(Summarize), "m")
    served = 0
    refusals: list[BudgetExceededError] = []

    async def one(index: int) -> None:
        nonlocal served
        with tenant_scope("acme"):
            try:
                await backend.predict({"text": f"text number {index}"})
            except BudgetExceededError as error:
                refusals.append(error)
            else:
                served += 1

    async with anyio.create_task_group() as tasks:
        for index in range(count):
            tasks.start_soon(one, index)
    return served, refusals


async def spent_usd(manager: ModelManager) -> float:
    ((used, _budget),) = (await manager.budgets.usage("acme")).values()
    return used.cost_usd


@pytest.mark.parametrize("appendonly", [True, False], ids=["aof", "no-persistence"])
async def test_a_tenants_usage_across_a_redis_restart(
    provider: LocalProvider,
    tmp_path: Path,
    appendonly: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "redis-data"
    data.mkdir()
    with restartable_redis(data, appendonly=appendonly) as server:
        with caplog.at_level(logging.ERROR, logger="llm_server.fleet"):
            before = manager_for(provider, tmp_path, server.url)
        persistence_error = "resets every tenant's budget usage to zero" in caplog.text
        assert persistence_error is not appendonly  # startup says when a restart loses usage
        try:
            before.budgets.charge("acme", Usage(requests=49, tokens=490, cost_usd=4.90))
        finally:
            await before.aclose()  # its last batch is written at close

        server.shutdown()
        server.start()  # same port, same folder

        after = manager_for(provider, tmp_path, server.url)  # a process started afterwards
        try:
            if not appendonly:
                assert await spent_usd(after) == 0.0  # the documented reset
                return
            assert await spent_usd(after) == pytest.approx(4.90)
            served, refusals = await calls(after, 5)
            # $4.90 of $5 admits one call; its estimate (over $1) holds the rest of the budget.
            assert (served, len(refusals)) == (1, 4)
            assert len(provider.requests) == 1
            assert all(error.fleet for error in refusals)  # decided on Redis's totals
            assert await spent_usd(after) >= 5.0  # the one call's real cost reached the limit
            served, refusals = await calls(after, 1)
            assert (served, len(refusals)) == (0, 1)  # at the limit: refused
            assert "$5" in str(refusals[0])
        finally:
            await after.aclose()


async def test_charges_made_while_redis_is_down_are_written_when_it_answers_again(
    provider: LocalProvider, tmp_path: Path, killable_redis: RedisExecutor, prefix: str
) -> None:
    manager = manager_for(provider, tmp_path, url_of(killable_redis), prefix)
    admin = redis.Redis(host=killable_redis.host, port=killable_redis.port, protocol=2)
    try:
        assert manager.fleet is not None
        assert not manager.fleet.connection.fallback
        with killable_redis.stopped():
            served, refusals = await calls(manager, 2)  # decided on this process's view
            assert (served, refusals) == (2, [])
            assert manager.fleet.describe()["charges_unwritten"] == 1  # one tenant period
        billed = provider.billed_tokens
        deadline = time.monotonic() + 10  # the sync thread notices Redis is back and writes
        for _ in range(100):
            if not manager.fleet.describe()["charges_unwritten"] or time.monotonic() > deadline:
                break
            await anyio.sleep(0.1)
        keys = [k for k in admin.keys(f"{prefix}:budget:acme:*") if not k.endswith(b":held")]
        assert manager.fleet.describe()["charges_unwritten"] == 0
        assert len(keys) == 1
        totals = admin.hgetall(keys[0])
        assert int(totals[b"requests"]) == 2
        assert int(totals[b"tokens"]) == sum(billed)
        assert float(totals[b"cost_usd"]) == pytest.approx(sum(billed) * 0.01)
    finally:
        admin.close()
        await manager.aclose()
