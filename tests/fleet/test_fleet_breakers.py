"""Circuit breakers shared through a real redis-server: several "processes" in one test, each
with its own connection, store and breaker, as ``uvicorn --workers N`` would have them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from _fleet_helpers import Connect, url_of
from _redis_proxy import RedisProxy
from pytest_redis.executor import RedisExecutor

from llm_server.core.circuit_breaker import BreakerRecord, BreakerState, CircuitBreaker
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import (
    CircuitOpenError,
    ConfigurationError,
    ProviderUnavailableError,
)
from llm_server.fleet import FleetConnection, RedisBreakerStore
from llm_server.testing import FakeClock

OPEN, CLOSED, HALF_OPEN = BreakerState.OPEN, BreakerState.CLOSED, BreakerState.HALF_OPEN


def breaker_in(
    connection: FleetConnection, *, start: bool = True, **options: Any
) -> CircuitBreaker:
    """One process's breaker "m" on a shared store (consecutive policy unless told)."""
    options.setdefault("failure_threshold", 5)
    options.setdefault("reset_timeout", 0.5)
    breaker = CircuitBreaker(name="m", store=RedisBreakerStore(connection), **options)
    if start:
        connection.start()
    return breaker


def fail() -> None:
    raise ProviderUnavailableError("503 from the provider")


def call(breaker: CircuitBreaker, fn: Callable[[], None]) -> str:
    """Call through the breaker: "ok", "failed" or "refused"."""
    try:
        breaker.call_sync(fn)
    except ProviderUnavailableError:
        return "failed"
    except CircuitOpenError:
        return "refused"
    return "ok"


def eventually(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_failures_of_the_whole_fleet_trip_every_process(connect: Connect) -> None:
    breakers = [breaker_in(connect()) for _ in range(4)]
    # 4 processes, 5 calls that fail: no process saw 5 failures of its own
    outcomes = [call(breakers[i % 4], fail) for i in range(5)]
    assert outcomes == ["failed"] * 5
    for breaker in breakers:
        eventually(lambda b=breaker: b.state is OPEN)  # type: ignore[misc]
        assert call(breaker, fail) == "refused"
    snapshot = breakers[3].snapshot()
    assert snapshot.opened_because == "5 consecutive failures across the fleet"


def test_successes_cost_no_round_trip_and_are_written_in_one_batch(
    connect: Connect, private_redis: RedisExecutor
) -> None:
    connection = connect()
    breaker = breaker_in(connection, start=False)  # no sync thread: nothing flushes but us
    # one flush first: a fresh Redis answers the first EVALSHA with NOSCRIPT, and that
    # refused call counts in commandstats too (the test failed when it ran first)
    assert call(breaker, lambda: None) == "ok"
    breaker._store.flush()  # type: ignore[attr-defined]
    before = connection.client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    for _ in range(100):
        assert call(breaker, lambda: None) == "ok"
    after = connection.client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert after == before  # the closed-state hot path made no round trip
    breaker._store.flush()  # type: ignore[attr-defined]  # what the sync thread does
    flushed = connection.client.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert flushed == before + 1


def test_a_success_anywhere_resets_the_fleets_failure_count(connect: Connect) -> None:
    a, b = (connect() for _ in range(2))
    first, second = breaker_in(a), breaker_in(b)
    for _ in range(4):
        assert call(first, fail) == "failed"
    assert call(second, lambda: None) == "ok"
    time.sleep(0.3)  # the sync thread writes the success within 100 ms
    for _ in range(4):
        assert call(first, fail) == "failed"
    assert first.state is CLOSED  # 4 + 4 failures, but a success came between


def test_an_open_breaker_probes_on_redis_clock_with_one_probe_for_the_fleet(
    connect: Connect,
) -> None:
    breakers = [breaker_in(connect(), reset_timeout=0.3) for _ in range(3)]
    breakers[0].force_open()
    breakers[0].reset()
    for _ in range(5):
        call(breakers[0], fail)
    for breaker in breakers:
        eventually(lambda b=breaker: b.state is not CLOSED)  # type: ignore[misc]
    time.sleep(0.35)
    admitted = []
    for breaker in breakers:
        try:
            admitted.append(breaker.admit())
        except CircuitOpenError:
            admitted.append(None)
    assert sum(ticket is not None for ticket in admitted) == 1  # one probe, fleet-wide
    prober = next(i for i, ticket in enumerate(admitted) if ticket is not None)
    breakers[prober].settle(admitted[prober], None)  # type: ignore[arg-type]
    for breaker in breakers:
        eventually(lambda b=breaker: b.state is CLOSED)  # type: ignore[misc]
        assert call(breaker, lambda: None) == "ok"


def test_a_probe_whose_process_died_frees_its_lease_when_it_expires(connect: Connect) -> None:
    crashed = breaker_in(connect(), reset_timeout=0.2, probe_lease_s=0.5)
    survivor = breaker_in(connect(), reset_timeout=0.2, probe_lease_s=0.5)
    crashed.force_open()
    crashed.reset()
    for _ in range(5):
        call(crashed, fail)
    time.sleep(0.25)
    crashed.admit()  # the probe starts, and its process never says how it ended
    with pytest.raises(CircuitOpenError):
        survivor.admit()
    time.sleep(0.55)  # the lease ran out
    ticket = survivor.admit()
    survivor.settle(ticket, None)
    eventually(lambda: survivor.state is CLOSED)


def test_half_open_probes_are_judged_across_the_fleet(connect: Connect) -> None:
    breakers = [breaker_in(connect(), reset_timeout=0.2, half_open_max_calls=3) for _ in range(3)]
    for _ in range(5):
        call(breakers[0], fail)
    time.sleep(0.25)
    tickets = [breaker.admit() for breaker in breakers]  # three probes, one per process
    for breaker, ticket in zip(breakers, tickets, strict=True):
        assert breaker.state is HALF_OPEN  # no process saw 3 successes of its own...
        breaker.settle(ticket, None)
    for breaker in breakers:  # ...but the fleet did
        eventually(lambda b=breaker: b.state is CLOSED)  # type: ignore[misc]


def test_a_new_process_reads_the_state_and_resets_nothing(connect: Connect) -> None:
    # pybreaker #26: creating a breaker on a shared store reset its counters and state
    old = breaker_in(connect(), reset_timeout=30)
    for _ in range(5):
        call(old, fail)
    assert old.state is OPEN
    new = breaker_in(connect(), reset_timeout=30)
    assert new.state is OPEN
    assert call(new, fail) == "refused"
    assert 29 < new.retry_after_s <= 30


def test_a_stale_process_cannot_extend_an_open_period(connect: Connect) -> None:
    # pybreaker #24: every worker re-wrote opened_at, so none ever reached half-open
    connection = connect()
    first = breaker_in(connection, reset_timeout=0.4)
    store = first._store  # type: ignore[attr-defined]
    for _ in range(5):
        call(first, fail)
    opened = store.get("m")
    stale = BreakerRecord(state=CLOSED, generation=opened.generation - 1)
    late = BreakerRecord(state=OPEN, retry_at=time.monotonic() + 60, generation=opened.generation)
    assert store.compare_and_set("m", stale, late) is False  # a second "open" is refused
    time.sleep(0.45)
    assert first.state is HALF_OPEN  # on time


def test_half_open_waits_for_redis_clock_not_the_local_one(connect: Connect) -> None:
    first = breaker_in(connect(), reset_timeout=30)
    store = first._store  # type: ignore[attr-defined]
    for _ in range(5):
        call(first, fail)
    opened = store.get("m")
    # a process whose clock runs ahead believes the period is over: Redis says no (the local
    # copy moves at once; the writer thread's write is refused and Redis's record wins)
    early = BreakerRecord(state=HALF_OPEN, generation=opened.generation + 1)
    store.compare_and_set("m", opened, early)
    eventually(lambda: store.get("m").generation == opened.generation)
    assert store.get("m").state is OPEN
    assert store._conn.client.hget(store._conn.key("cb", "m"), "s") == b"open"
    assert 29 < store.get("m").retry_at - time.monotonic() <= 30


def test_applications_with_different_prefixes_share_nothing(redis_url: str) -> None:
    # pybreaker #88: breakers of different apps shared keys
    connections = [
        FleetConnection(redis_url, prefix=name, timeout_s=0.05) for name in ("app-a", "app-b")
    ]
    try:
        a, b = (breaker_in(connection) for connection in connections)
        a.force_open()
        time.sleep(0.2)
        assert a.state is BreakerState.FORCED_OPEN
        assert b.state is CLOSED
    finally:
        a.reset()
        for connection in connections:
            connection.close()


def test_redis_going_away_falls_back_warns_once_and_resyncs(
    killable_redis: RedisExecutor, caplog: pytest.LogCaptureFixture, connect: Connect
) -> None:
    connection = connect(url_of(killable_redis))
    breaker = breaker_in(connection)
    with killable_redis.stopped():
        with caplog.at_level(logging.WARNING, logger="llm_server.fleet"):
            start = time.monotonic()
            for _ in range(5):
                assert call(breaker, fail) == "failed"  # one timeout, then local at once
            assert call(breaker, fail) == "refused"  # this process's own breaker decided
            assert time.monotonic() - start < 1.0
        assert connection.fallback
        warnings = [r for r in caplog.records if "per process" in r.getMessage()]
        assert len(warnings) == 1
        breaker.reset()
    eventually(lambda: not connection.fallback, timeout_s=5)
    assert any("answers again" in r.getMessage() for r in caplog.records)
    for _ in range(5):
        call(breaker, fail)
    # shared again: the transition is written by the writer thread (never on the caller's
    # path), so another process sees it once written, within its sync interval
    other = breaker_in(connect(url_of(killable_redis)))
    eventually(lambda: other.state is OPEN, timeout_s=3)


def test_a_slow_redis_costs_a_call_one_timeout_then_the_process_falls_back(
    killable_redis: RedisExecutor, connect: Connect
) -> None:
    connection = connect(url_of(killable_redis))
    breaker = breaker_in(connection)
    admin = redis.Redis(host=killable_redis.host, port=killable_redis.port, protocol=2)
    admin.client_pause(2500)  # Redis answers nobody for 2.5 s
    try:
        start = time.monotonic()
        assert call(breaker, fail) == "failed"  # its report timed out: decided locally
        assert time.monotonic() - start < 0.5
        assert connection.timeouts == 1
        # the sync thread's patient ping (1 s) fails too: the whole process falls back
        eventually(lambda: connection.fallback, timeout_s=3)
        start = time.monotonic()
        assert call(breaker, fail) == "failed"
        assert time.monotonic() - start < 0.05  # no Redis on the request path any more
    finally:
        admin.close()
    eventually(lambda: not connection.fallback, timeout_s=6)  # shared again once it answers


def test_a_slow_redis_never_keeps_a_failing_provider_from_tripping_the_breaker(
    killable_redis: RedisExecutor, connect: Connect
) -> None:
    connection = connect(url_of(killable_redis))
    breaker = breaker_in(connection)
    admin = redis.Redis(host=killable_redis.host, port=killable_redis.port, protocol=2)
    admin.client_pause(2000)  # slower than every timeout, not yet declared down
    try:
        start = time.monotonic()
        outcomes = [call(breaker, fail) for _ in range(6)]
        assert outcomes == ["failed"] * 5 + ["refused"]  # this process's own counts decided
        assert time.monotonic() - start < 0.5  # one 50 ms timeout, then no Redis on the path
    finally:
        admin.close()
    eventually(connection.reliable, timeout_s=6)


@pytest.mark.parametrize("prefix", ["app:x", "app:", "a b", ""])
def test_a_prefix_that_could_overlap_another_is_refused(redis_url: str, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="LLM_SERVER_REDIS_PREFIX"):
        FleetConnection(redis_url, prefix=prefix, timeout_s=0.05)
    with pytest.raises(ConfigurationError, match="LLM_SERVER_REDIS_PREFIX"):
        FrameworkSettings(redis_prefix=prefix)


def test_a_transition_from_an_older_generation_of_the_same_state_is_refused(
    connect: Connect,
) -> None:
    breaker = breaker_in(connect(), reset_timeout=0.2)
    store = breaker._store  # type: ignore[attr-defined]
    for _ in range(5):
        call(breaker, fail)
    first_open = store.get("m")  # open, generation 1
    time.sleep(0.25)
    ticket = breaker.admit()  # half-open, generation 2
    breaker.settle(ticket, ProviderUnavailableError("503"))  # open again, generation 3
    assert store.get("m").state is OPEN
    assert store.get("m").generation == first_open.generation + 2
    # a process that still holds the first open record tries to close the breaker
    closing = BreakerRecord(state=CLOSED, generation=first_open.generation + 1)
    assert store.compare_and_set("m", first_open, closing) is False
    assert store.get("m").state is OPEN


def test_redis_refuses_a_transition_from_an_older_generation_of_the_same_state(
    connect: Connect,
) -> None:
    breaker = breaker_in(connect(), reset_timeout=0.2)
    store = breaker._store  # type: ignore[attr-defined]
    for _ in range(5):
        call(breaker, fail)
    eventually(lambda: store.get("m").state is OPEN)
    first_open = store.get("m")
    key = store._conn.key("cb", "m")
    eventually(lambda: int(store._conn.client.hget(key, "g") or 0) == first_open.generation)
    # another process read the first open record; its sync thread is not running, so its
    # copy stays there (as one whose pub/sub message has not arrived yet)
    other = breaker_in(connect(), start=False, reset_timeout=0.2)
    other_store = other._store  # type: ignore[attr-defined]
    stale = other_store.get("m")
    assert (stale.state, stale.generation) == (OPEN, first_open.generation)
    time.sleep(0.25)
    ticket = breaker.admit()  # half-open, generation 2
    breaker.settle(ticket, ProviderUnavailableError("503"))  # open again, generation 3
    reopened = first_open.generation + 2
    eventually(lambda: int(store._conn.client.hget(key, "g") or 0) == reopened)
    # same state (open), older generation: the stale process's copy accepts it, Redis must not
    closing = BreakerRecord(state=CLOSED, generation=first_open.generation + 1)
    assert other_store.compare_and_set("m", stale, closing) is True  # its copy only
    other_store.write()  # what its writer thread does
    assert store._conn.client.hget(key, "s") == b"open"
    assert int(store._conn.client.hget(key, "g")) == reopened
    assert (other_store.get("m").state, other_store.get("m").generation) == (OPEN, reopened)


def test_a_transition_reaches_another_process_in_its_message_with_no_read(
    connect: Connect, private_redis: RedisExecutor
) -> None:
    tripping = breaker_in(connect(), reset_timeout=30)
    channel = tripping._store.channel  # type: ignore[attr-defined]
    proxy = RedisProxy(private_redis.host, private_redis.port).start()
    listener = redis.Redis(host=private_redis.host, port=private_redis.port, protocol=2)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(channel)
        other = breaker_in(connect(proxy.url, timeout_s=0.2), start=False, reset_timeout=30)
        for _ in range(5):
            call(tripping, fail)  # the fifth failure opens the breaker in Redis
        message = None
        deadline = time.monotonic() + 3
        while message is None:
            assert time.monotonic() < deadline, "no transition was published"
            message = pubsub.get_message(timeout=0.1)
        # the other process's Redis stops answering: what it learns comes from the message
        proxy.silence()
        other._store._changed(message["data"].decode())  # type: ignore[attr-defined]
        record = other._store.get("m")  # type: ignore[attr-defined]
        opened = tripping._store.get("m")  # type: ignore[attr-defined]
        assert (record.state, record.generation) == (OPEN, opened.generation)
        assert other.state is OPEN
        assert 29 < record.retry_at - time.monotonic() <= 30
    finally:
        pubsub.close()
        listener.close()
        proxy.speak()
        proxy.close()


def test_a_stale_read_never_lowers_the_generation(connect: Connect) -> None:
    breaker = breaker_in(connect(), reset_timeout=30)
    store = breaker._store  # type: ignore[attr-defined]
    for _ in range(5):
        call(breaker, fail)
    opened = store.get("m")
    # the sync thread's read that left before the transition landed
    store._store("m", [b"closed", opened.generation - 1, 0], notify=True)
    assert store.get("m") == opened
    assert breaker.state is OPEN


def test_a_record_redis_lost_is_written_again_with_its_generation(connect: Connect) -> None:
    connection = connect()
    breaker = breaker_in(connection, reset_timeout=30)
    for _ in range(5):
        call(breaker, fail)
    opened = breaker._store.get("m")  # type: ignore[attr-defined]
    connection.client.delete(connection.key("cb", "m"))  # a restart without persistence
    eventually(lambda: connection.client.hget(connection.key("cb", "m"), "s") == b"open")
    assert int(connection.client.hget(connection.key("cb", "m"), "g")) == opened.generation
    other = breaker_in(connect(), reset_timeout=30)
    assert other.state is OPEN  # a new process does not start over at generation 0


def test_a_forced_state_is_the_fleets_with_who_why_and_its_ttl(connect: Connect) -> None:
    forcing = breaker_in(connect())
    other = breaker_in(connect())
    forcing.force_open(ttl_s=0.6, by="ops", reason="provider maintenance")
    eventually(lambda: other.state is BreakerState.FORCED_OPEN)
    eventually(lambda: other.snapshot().forced is not None)
    forced = other.snapshot().forced
    assert forced is not None
    assert (forced.by, forced.reason, forced.ttl_s) == ("ops", "provider maintenance", 0.6)
    assert call(other, lambda: None) == "refused"
    time.sleep(0.65)  # the TTL ran out, on Redis's clock
    for breaker in (forcing, other):
        eventually(lambda b=breaker: b.state is CLOSED)  # type: ignore[misc]
        assert call(breaker, lambda: None) == "ok"


def test_a_forced_state_without_ttl_stays_until_reset_everywhere(connect: Connect) -> None:
    forcing = breaker_in(connect())
    other = breaker_in(connect())
    forcing.disable(by="ops", reason="the health check flaps")
    eventually(lambda: other.state is BreakerState.DISABLED)
    time.sleep(1.1)  # a re-read changes nothing
    assert other.state is BreakerState.DISABLED
    other.reset()  # cleared explicitly, from any process
    eventually(lambda: forcing.state is CLOSED)


def test_a_breaker_on_an_injected_clock_reads_the_fleets_open_period_on_it(
    connect: Connect,
) -> None:
    clock = FakeClock()
    breaker = breaker_in(connect(), reset_timeout=0.3, clock=clock)
    for _ in range(5):
        call(breaker, fail)
    assert breaker.state is OPEN  # tripped in Redis, on Redis's clock
    assert 0.2 < breaker.retry_after_s <= 0.3  # ... and told on the breaker's clock
    time.sleep(0.35)  # Redis's clock
    clock.advance(0.35)  # the breaker's
    assert breaker.state is HALF_OPEN


def test_the_fleets_failure_rate_trips_where_no_process_alone_would(connect: Connect) -> None:
    def rate_breaker(connection: FleetConnection) -> CircuitBreaker:
        breaker = CircuitBreaker(
            name="m",
            store=RedisBreakerStore(connection),
            failure_rate_threshold=0.5,
            minimum_calls=4,
            window_size=10,
            reset_timeout=30,
        )
        connection.start()
        return breaker

    healthy, failing = rate_breaker(connect()), rate_breaker(connect())
    for _ in range(2):
        assert call(healthy, lambda: None) == "ok"
    healthy._store.flush()  # type: ignore[attr-defined]  # (what the sync thread does)
    # 2 calls here: under minimum_calls (4) for this process alone; the fleet saw 4 calls,
    # 2 failed (50 %): open everywhere
    outcomes = [call(failing, fail) for _ in range(3)]
    assert outcomes == ["failed", "failed", "refused"]
    for breaker in (failing, healthy):
        eventually(lambda b=breaker: b.state is OPEN)  # type: ignore[misc]
    assert "failure rate" in (healthy.snapshot().opened_because or "")
