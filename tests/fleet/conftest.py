"""Fixtures for the fleet tests: private redis-server instances on free loopback ports.

The shared Redis on 127.0.0.1:6379 is never touched: every test runs against a server that
pytest-redis starts for this session (``private_redis``), under a key prefix of its own; the
tests that stop or restart Redis get another server (``killable_redis``) so nothing else
sees it go away. Without ``redis-server`` these tests skip (``apt-get install redis-server``);
under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest
from _fleet_helpers import Connect, url_of
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

from llm_server.fleet import FleetConnection

_private_redis_proc = factories.redis_proc(port=None)
_killable_redis_proc = factories.redis_proc(port=None)


def _need_redis_server() -> None:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed: apt-get install redis-server"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def private_redis(request: pytest.FixtureRequest) -> RedisExecutor:
    """A redis-server of this test session's own (free port on 127.0.0.1)."""
    _need_redis_server()
    executor: RedisExecutor = request.getfixturevalue("_private_redis_proc")
    return executor


@pytest.fixture(scope="session")
def killable_redis(request: pytest.FixtureRequest) -> RedisExecutor:
    """Another private redis-server, for the tests that stop and restart it."""
    _need_redis_server()
    executor: RedisExecutor = request.getfixturevalue("_killable_redis_proc")
    return executor


@pytest.fixture
def redis_url(private_redis: RedisExecutor) -> str:
    """The private server's URL."""
    return url_of(private_redis)


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def connect(redis_url: str, prefix: str) -> Iterator[Connect]:
    """``connect(url=..., timeout_s=...)``: a new FleetConnection (one "process" of a fleet),
    to the private server by default; all are closed when the test ends."""
    made: list[FleetConnection] = []

    def make(url: str = redis_url, *, timeout_s: float = 0.05) -> FleetConnection:
        connection = FleetConnection(url, prefix=prefix, timeout_s=timeout_s)
        connection.check(required=False)
        made.append(connection)
        return connection

    yield make
    for connection in made:
        connection.close()
