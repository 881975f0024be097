"""Rate-based trip policies: count and time sliding windows, minimum calls, slow calls."""

from __future__ import annotations

import pytest
from _reliability_helpers import record_failures, succeed

from llm_server.core.circuit_breaker import BreakerState, CircuitBreaker
from llm_server.core.reliability._breaker_window import CountWindow, TimeWindow
from llm_server.testing import FakeClock

pytestmark = pytest.mark.anyio


def rate_breaker(clock: FakeClock, **options: object) -> CircuitBreaker:
    return CircuitBreaker(clock=clock, failure_rate_threshold=0.5, **options)  # type: ignore[arg-type]


async def test_count_window_trips_at_the_failure_rate(clock: FakeClock) -> None:
    breaker = rate_breaker(clock, window_size=4, minimum_calls=4)
    await record_failures(breaker, 1)
    await breaker.call(succeed)
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.CLOSED  # 3 calls: below the minimum
    await breaker.call(succeed)  # 2 of 4 failed: 50 %
    assert breaker.state is BreakerState.OPEN


async def test_a_rate_policy_ignores_consecutive_failures_below_the_rate(
    clock: FakeClock,
) -> None:
    breaker = rate_breaker(clock, window_size=10, minimum_calls=10, failure_threshold=1)
    for _ in range(6):
        await breaker.call(succeed)
    await record_failures(breaker, 4)  # 4 in a row, but 40 %
    assert breaker.state is BreakerState.CLOSED
    await record_failures(breaker, 1)  # the oldest success slides out: 5 of 10
    assert breaker.state is BreakerState.OPEN


async def test_count_window_forgets_the_oldest_calls(clock: FakeClock) -> None:
    breaker = rate_breaker(clock, window_size=4, minimum_calls=4)
    await record_failures(breaker, 1)
    for _ in range(4):
        await breaker.call(succeed)  # the failure slides out of the window
    snapshot = breaker.snapshot()
    assert (snapshot.window_calls, snapshot.window_failures) == (4, 0)
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.CLOSED  # 1 of 4


async def test_time_window_forgets_calls_older_than_the_window(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        clock=clock,
        failure_rate_threshold=1.0,
        window_type="time",
        window_size=10,
        minimum_calls=3,
    )
    await record_failures(breaker, 1)  # t=0
    clock.advance(5)
    await record_failures(breaker, 1)  # t=5
    clock.advance(5.2)
    await record_failures(breaker, 1)  # t=10.2: the t=0 failure has left the window
    assert breaker.snapshot().window_calls == 2
    assert breaker.state is BreakerState.CLOSED
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.OPEN


async def test_time_window_empties_after_a_long_quiet_spell(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        clock=clock, failure_rate_threshold=0.5, window_type="time", window_size=60
    )
    await record_failures(breaker, 5)
    clock.advance(3600)
    assert breaker.snapshot().window_calls == 0


async def test_slow_successes_trip_the_slow_call_rate(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        clock=clock,
        slow_call_duration_s=2.0,
        slow_call_rate_threshold=0.5,
        window_size=4,
        minimum_calls=4,
    )

    async def slow() -> str:
        await clock.sleep(3.0)
        return "slow"

    await breaker.call(succeed)
    await breaker.call(succeed)
    await breaker.call(slow)
    assert breaker.state is BreakerState.CLOSED
    await breaker.call(slow)  # 2 of 4 slow
    assert breaker.state is BreakerState.OPEN


async def test_fast_calls_never_count_as_slow(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        clock=clock, slow_call_duration_s=2.0, slow_call_rate_threshold=0.1, window_size=5
    )
    for _ in range(20):
        await breaker.call(succeed)
    assert breaker.snapshot().window_slow_calls == 0
    assert breaker.state is BreakerState.CLOSED


async def test_consecutive_policy_still_applies_with_only_a_slow_call_threshold(
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(clock=clock, failure_threshold=2, slow_call_duration_s=5.0)
    await record_failures(breaker, 2)
    assert breaker.state is BreakerState.OPEN


async def test_the_window_starts_empty_after_the_breaker_closes(clock: FakeClock) -> None:
    breaker = rate_breaker(clock, window_size=4, minimum_calls=2)
    await record_failures(breaker, 2)
    assert breaker.state is BreakerState.OPEN
    clock.advance(60)
    await breaker.call(succeed)
    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.window_calls == 0
    assert snapshot.failure_rate == 0.0


async def test_snapshot_reports_rates(clock: FakeClock) -> None:
    breaker = rate_breaker(clock, window_size=10, minimum_calls=10)
    await record_failures(breaker, 1)
    for _ in range(3):
        await breaker.call(succeed)
    snapshot = breaker.snapshot()
    assert snapshot.failure_rate == pytest.approx(0.25)
    assert snapshot.slow_call_rate == 0.0


def test_count_window_running_totals_match_a_recount() -> None:
    window = CountWindow(3)
    outcomes = [(True, False), (False, True), (True, True), (False, False), (True, False)]
    for failed, slow in outcomes:
        window.record(0.0, failed=failed, slow=slow)
    last = outcomes[-3:]
    assert window.calls == 3
    assert window.failures == sum(f for f, _ in last)
    assert window.slow == sum(s for _, s in last)
    window.clear()
    assert (window.calls, window.failures, window.slow) == (0, 0, 0)


def test_time_window_buckets_by_second() -> None:
    window = TimeWindow(3)
    window.record(0.1, failed=True, slow=False)
    window.record(1.5, failed=False, slow=True)
    window.record(2.9, failed=True, slow=True)
    assert (window.calls, window.failures, window.slow) == (3, 2, 2)
    window.refresh(3.0)  # second 0 leaves
    assert (window.calls, window.failures, window.slow) == (2, 1, 2)
    window.refresh(2.5)  # time never goes back
    assert window.calls == 2
    window.refresh(100.0)
    assert (window.calls, window.failures, window.slow) == (0, 0, 0)
