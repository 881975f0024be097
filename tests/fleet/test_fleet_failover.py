"""Failover and misconfiguration: a demoted primary, a user without channel rights, a key of
another kind under the prefix, and a failover that Redis Sentinel runs."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _fleet_helpers import Connect
from _redis_proxy import RedisProxy
from _redis_servers import port_of, redis_servers, sentinels, wait_for
from pytest_redis.executor import RedisExecutor

from llm_server.core.circuit_breaker import CircuitBreaker
from llm_server.core.errors import ConfigurationError, ProviderUnavailableError
from llm_server.fleet import FleetConnection, RedisBreakerStore


def _fail() -> None:
    raise ProviderUnavailableError("503 from the provider")


def failures_in(client: redis.Redis, connection: FleetConnection) -> int:
    return int(client.hget(connection.key("cb", "m"), "f") or 0)


def test_a_demoted_primary_is_left_for_the_new_one_within_5_s(
    tmp_path: Path, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_servers(tmp_path, 2) as (primary, replica):
        replica.replicaof("127.0.0.1", port_of(primary))
        proxy = RedisProxy("127.0.0.1", port_of(primary)).start()
        try:
            connection = connect(proxy.url)
            breaker = CircuitBreaker(
                name="m", store=RedisBreakerStore(connection), failure_threshold=10_000
            )
            connection.start()
            for _ in range(3):
                with pytest.raises(ProviderUnavailableError):
                    breaker.call_sync(_fail)
            assert failures_in(primary, connection) == 3
            # the failover: the replica is promoted, the old primary follows it, the address
            # (here the proxy) now leads to the new primary; open connections still reach the old
            replica.replicaof("no", "one")
            primary.replicaof("127.0.0.1", port_of(replica))
            proxy.target = ("127.0.0.1", port_of(replica))
            promoted_at = time.monotonic()
            before = failures_in(replica, connection)
            while failures_in(replica, connection) <= before:
                assert time.monotonic() - promoted_at < 5, (
                    f"no write reached the new primary; fell back {connection.fallbacks} times"
                )
                with pytest.raises(ProviderUnavailableError):
                    breaker.call_sync(_fail)
                time.sleep(0.05)
            recovered_s = time.monotonic() - promoted_at
            assert connection.fallbacks <= 1  # one fallback, no flapping
            assert any("it is a replica now" in r.getMessage() for r in caplog.records)
            print(f"recovered {recovered_s:.2f} s after the failover")
        finally:
            proxy.close()


@pytest.fixture
def channelless_user(private_redis: RedisExecutor, prefix: str) -> Iterator[str]:
    """A URL whose ACL user may use the prefix's keys but no channel (Redis 7's default)."""
    admin = redis.Redis(host=private_redis.host, port=private_redis.port, protocol=2)
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    admin.acl_setuser(
        name,
        enabled=True,
        passwords=["+secret-pw"],
        keys=[f"{prefix}:*"],
        commands=["+@all"],
        reset_channels=True,
    )
    yield f"redis://{name}:secret-pw@{private_redis.host}:{private_redis.port}/0"
    admin.acl_deluser(name)
    admin.close()


def test_a_user_without_channel_rights_fails_a_required_startup(
    channelless_user: str, prefix: str
) -> None:
    connection = FleetConnection(channelless_user, prefix=prefix, timeout_s=0.05)
    try:
        with pytest.raises(ConfigurationError) as caught:
            connection.check(required=True)
        message = str(caught.value)
        assert "LLM_SERVER_REDIS_URL" in message
        assert "LLM_SERVER_REDIS_REQUIRED" in message
        assert "lacks a right" in message
        assert "secret-pw" not in message
    finally:
        connection.close()


def test_a_user_without_channel_rights_stays_local_with_one_error_not_flapping(
    channelless_user: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    connection = FleetConnection(channelless_user, prefix=prefix, timeout_s=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="llm_server.fleet"):
            connection.check(required=False)
            connection.start()
            time.sleep(2.5)  # the sync thread would have recovered twice by now
        assert connection.fallback
        assert connection.fallbacks == 1
        assert connection.misconfigured is not None
        assert "lacks a right" in connection.misconfigured
        assert connection.describe()["last_error_reason"] == "noperm"
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert not any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        connection.close()


def test_a_key_of_another_kind_under_the_prefix_names_the_prefix_setting(
    connect: Connect, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    connection = connect()
    connection.client.set(connection.key("members"), "not a sorted set")
    with caplog.at_level(logging.WARNING, logger="llm_server.fleet"):
        connection.start()
        deadline = time.monotonic() + 3
        while connection.misconfigured is None:
            assert time.monotonic() < deadline, "the heartbeat's WRONGTYPE went unnoticed"
            time.sleep(0.02)
    assert "LLM_SERVER_REDIS_PREFIX" in connection.misconfigured
    assert connection.fallback
    connection.client.delete(connection.key("members"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sentinel_failover_moves_the_fleet_to_the_new_primary(tmp_path: Path) -> None:
    with redis_servers(tmp_path, 2) as (primary, replica):
        replica.replicaof("127.0.0.1", port_of(primary))
        with sentinels(tmp_path, port_of(primary), 2) as watchers:
            hosts = ",".join(f"127.0.0.1:{port_of(w)}" for w in watchers)
            prefix = f"test-{uuid.uuid4().hex[:8]}"
            connection = FleetConnection(
                f"redis+sentinel://{hosts}/fleet", prefix=prefix, timeout_s=0.2
            )
            try:
                connection.check(required=True)
                breaker = CircuitBreaker(
                    name="m", store=RedisBreakerStore(connection), failure_threshold=10_000
                )
                connection.start()
                with pytest.raises(ProviderUnavailableError):
                    breaker.call_sync(_fail)
                assert failures_in(primary, connection) == 1
                deadline = time.monotonic() + 30
                while True:  # the sentinels learn about the replica from the primary's INFO
                    try:
                        watchers[0].execute_command("SENTINEL", "FAILOVER", "fleet")
                        break
                    except redis.ResponseError:
                        assert time.monotonic() < deadline, "sentinel never saw the replica"
                        time.sleep(0.2)
                # done when the replica leads and the old primary follows it (writes to it
                # then fail with READONLY)
                while (
                    replica.info("replication")["role"] != "master"
                    or primary.info("replication")["role"] != "slave"
                ):
                    assert time.monotonic() < deadline, "sentinel did not fail over"
                    time.sleep(0.1)
                promoted_at = time.monotonic()
                wait_for(replica)
                before = failures_in(replica, connection)
                while failures_in(replica, connection) <= before:
                    assert time.monotonic() - promoted_at < 5, connection.describe()
                    with pytest.raises(ProviderUnavailableError):
                        breaker.call_sync(_fail)
                    time.sleep(0.05)
                print(f"recovered {time.monotonic() - promoted_at:.2f} s after the promotion")
            finally:
                connection.close()
