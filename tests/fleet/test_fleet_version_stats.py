"""Program versions' live figures shared through Redis, the guard's lease, and the metrics."""

from __future__ import annotations

import time

import pytest
from _fleet_helpers import Connect
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.exceptions import ResponseError

from llm_server.core.errors import OutputParseError, ProviderUnavailableError
from llm_server.fleet._version_stats import FleetLock, RedisVersionStats
from llm_server.models.canary import VersionStats


def test_two_processes_see_the_fleets_figures_after_a_flush_and_a_refresh(
    connect: Connect,
) -> None:
    one, two = VersionStats(), VersionStats()
    shared_one = RedisVersionStats(connect(), one)
    shared_two = RedisVersionStats(connect(), two)
    for _ in range(3):
        one.record("qa", "1.1.0", scope="7", canary=True, latency_s=0.02, tokens=30, cost_usd=0.01)
    two.record("qa", "1.1.0", scope="7", canary=True, latency_s=0.9, error=OutputParseError("x"))
    two.record("qa", "1.0.0", scope="7", latency_s=0.01, error=ProviderUnavailableError("y"))
    assert two.figures("qa", "1.1.0", scope="7").requests == 1  # nothing written yet
    shared_one.flush()
    shared_two.flush()
    shared_one.refresh()
    fleet = one.figures("qa", "1.1.0", scope="7")
    assert (fleet.requests, fleet.parse_failures, fleet.tokens, fleet.priced) == (4, 1, 90, 3)
    assert fleet.errors == {"OutputParseError": 1}
    assert round(fleet.cost_usd, 6) == 0.03
    median, slowest = fleet.latency_ms(0.5), fleet.latency_ms(1.0)
    assert median is not None
    assert slowest is not None
    assert median < 25.0  # ms: three of four took 20 ms (a bucket 15 % wide)
    assert slowest >= 900.0
    assert one.local("qa", "1.1.0", scope="7").requests == 3
    one.watch("qa", "1.0.0", scope="7")  # never served here, read for the guard
    shared_one.refresh()
    assert one.figures("qa", "1.0.0", scope="7").errors == {"ProviderUnavailableError": 1}


def test_counts_that_could_not_be_written_are_kept_and_written_later(connect: Connect) -> None:
    stats = VersionStats()
    connection = connect()
    shared = RedisVersionStats(connection, stats)
    stats.record("qa", "1.0.0", latency_s=0.01)
    taken = stats.take_pending()
    stats.give_back(taken)  # what flush() does when Redis fails
    stats.record("qa", "1.0.0", latency_s=0.01)
    shared.flush()
    assert stats.figures("qa", "1.0.0").requests == 2
    assert connection.client.hget(connection.key("vstats", "qa", "-", "1.0.0"), "requests") == b"2"


def test_one_process_holds_the_guards_lease_until_it_lapses(connect: Connect) -> None:
    first = FleetLock(connect(), "canary-guard", ttl_s=0.3)
    second = FleetLock(connect(), "canary-guard", ttl_s=0.3)
    assert first.acquire()
    assert not second.acquire()
    assert first.acquire()  # renewed by its holder
    time.sleep(0.4)
    assert second.acquire()
    assert not first.acquire()


def test_the_metrics_carry_the_version_and_whether_it_was_the_canary() -> None:
    reader = InMemoryMetricReader()
    stats = VersionStats(meter_provider=MeterProvider(metric_readers=[reader]))
    stats.record("qa", "1.1.0", scope="7", canary=True, latency_s=0.05)
    stats.record("qa", "1.0.0", scope="7", latency_s=0.05, error=OutputParseError("x"))
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        metric.name: [dict(p.attributes or {}) for p in metric.data.data_points]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert sorted(points["llm_server.program.requests"], key=str) == sorted(
        [
            {"program": "qa", "version": "1.1.0", "canary": True, "outcome": "ok"},
            {"program": "qa", "version": "1.0.0", "canary": False, "outcome": "OutputParseError"},
        ],
        key=str,
    )
    assert {p["version"] for p in points["llm_server.program.duration"]} == {"1.0.0", "1.1.0"}


def test_counts_a_failed_write_lost_are_written_by_the_next_one(connect: Connect) -> None:
    stats = VersionStats()
    connection = connect()
    shared = RedisVersionStats(connection, stats)
    key = connection.key("vstats", "qa", "-", "1.0.0")
    connection.client.set(key, "not a hash")  # the write fails (WRONGTYPE)
    stats.record("qa", "1.0.0", latency_s=0.01, tokens=7)
    with pytest.raises(ResponseError):
        shared.flush()
    connection.client.delete(key)
    stats.record("qa", "1.0.0", latency_s=0.01, tokens=3)
    shared.flush()
    assert connection.client.hmget(key, ["requests", "tokens"]) == [b"2", b"10"]
    assert stats.figures("qa", "1.0.0").requests == 2


def test_between_reads_a_turn_adds_what_it_wrote_and_once_a_second_it_reads_the_fleet(
    connect: Connect,
) -> None:
    one, two = VersionStats(), VersionStats()
    shared_one = RedisVersionStats(connect(), one)
    shared_two = RedisVersionStats(connect(), two)
    one.record("qa", "1.0.0", latency_s=0.01, tokens=10)
    shared_one.flush()  # the first turn reads the totals too
    two.record("qa", "1.0.0", latency_s=0.01, tokens=5)
    shared_two.flush()
    one.record("qa", "1.0.0", latency_s=0.01, tokens=10)
    shared_one.flush()  # within the second: no read, its own counts are added
    figures = one.figures("qa", "1.0.0")
    assert (figures.requests, figures.tokens) == (2, 20)
    shared_one._next_read = 0.0  # a second later
    shared_one.flush()  # nothing new to write: the version is re-read in the batch
    figures = one.figures("qa", "1.0.0")
    assert (figures.requests, figures.tokens) == (3, 25)
