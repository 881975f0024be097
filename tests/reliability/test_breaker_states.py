"""The circuit breaker's state machine, in the spirit of pybreaker's own test matrix."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from _reliability_helpers import RecordingListener, fail_500, record_failures, succeed

from llm_server.core.circuit_breaker import (
    BreakerRecord,
    BreakerState,
    CallOutcome,
    CircuitBreaker,
    InMemoryBreakerStore,
)
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import (
    CircuitOpenError,
    ConfigurationError,
    ContextWindowExceededError,
    DataValidationError,
    InputError,
    ModelTimeoutError,
    OutputParseError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderUnavailableError,
    RateLimitedError,
)
from llm_server.core.model_config import BreakerConfig
from llm_server.testing import FakeClock

pytestmark = pytest.mark.anyio


def raiser(exc: BaseException) -> Callable[[], Awaitable[str]]:
    async def fn() -> str:
        raise exc

    return fn


# --- closed ----------------------------------------------------------------------------------


async def test_a_new_breaker_is_closed_and_passes_results_through(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    assert breaker.state is BreakerState.CLOSED
    assert await breaker.call(succeed) == "ok"
    assert breaker.snapshot().successes == 1
    assert breaker.retry_after_s == 0.0


async def test_arguments_are_passed_to_the_guarded_function(clock: FakeClock) -> None:
    async def add(a: int, *, b: int) -> int:
        return a + b

    assert await CircuitBreaker(clock=clock).call(add, 2, b=3) == 5


@pytest.mark.parametrize("threshold", [1, 3, 5])
async def test_opens_after_exactly_threshold_consecutive_failures(
    clock: FakeClock, threshold: int
) -> None:
    breaker = CircuitBreaker(failure_threshold=threshold, clock=clock)
    await record_failures(breaker, threshold - 1)
    assert breaker.state is BreakerState.CLOSED
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.OPEN


async def test_a_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    await record_failures(breaker, 2)
    await breaker.call(succeed)
    await record_failures(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().consecutive_failures == 2


@pytest.mark.parametrize(
    "error",
    [
        ProviderUnavailableError("500"),
        ModelTimeoutError("slow"),
        RateLimitedError("429", retry_after_s=1.0),
        TimeoutError(),
        ConnectionRefusedError(),
        OSError("reset"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_transient_errors_count_as_failures(clock: FakeClock, error: Exception) -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    with pytest.raises(type(error)):
        await breaker.call(raiser(error))
    assert breaker.state is BreakerState.OPEN


@pytest.mark.parametrize(
    "error",
    [
        ProviderAuthError("401"),
        ProviderBadRequestError("400"),
        ContextWindowExceededError("too long"),
        OutputParseError("garbled"),
        InputError("bad"),
        DataValidationError("bad field"),
        ValueError("a bug in the caller"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_other_errors_count_as_neither_failure_nor_success(
    clock: FakeClock, error: BaseException
) -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    await record_failures(breaker, 2)
    with pytest.raises(type(error)):
        await breaker.call(raiser(error))
    # not a success: the two failures still count, so one more opens the breaker
    assert breaker.snapshot().consecutive_failures == 2
    assert breaker.snapshot().ignored == 1
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.OPEN


async def test_is_failure_predicate_replaces_the_default(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        failure_threshold=1, clock=clock, is_failure=lambda e: isinstance(e, ValueError)
    )
    with pytest.raises(ProviderUnavailableError):
        await breaker.call(fail_500)
    assert breaker.state is BreakerState.CLOSED
    with pytest.raises(ValueError, match="x"):
        await breaker.call(raiser(ValueError("x")))
    assert breaker.state is BreakerState.OPEN


@pytest.mark.parametrize(
    "rule",
    [RateLimitedError, lambda e: isinstance(e, RateLimitedError)],
    ids=["type", "predicate"],
)
async def test_excluded_errors_never_count(clock: FakeClock, rule: Any) -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=clock, exclude=[rule])
    with pytest.raises(RateLimitedError):
        await breaker.call(raiser(RateLimitedError("429")))
    assert breaker.state is BreakerState.CLOSED
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.OPEN


async def test_a_raising_failure_predicate_ignores_the_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    breaker = CircuitBreaker(failure_threshold=1, clock=clock, is_failure=broken)
    with pytest.raises(ProviderUnavailableError):
        await breaker.call(fail_500)
    assert breaker.state is BreakerState.CLOSED
    assert "failure predicate raised" in caplog.text


# --- open ------------------------------------------------------------------------------------


async def test_open_breaker_refuses_without_calling(clock: FakeClock) -> None:
    breaker = CircuitBreaker(name="gpt", failure_threshold=1, reset_timeout=30, clock=clock)
    await record_failures(breaker, 1)
    clock.advance(10)
    called = False

    async def guarded() -> None:
        nonlocal called
        called = True

    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(guarded)
    assert not called
    assert info.value.breaker == "gpt"
    assert info.value.retry_after_s == pytest.approx(20.0)
    assert breaker.retry_after_s == pytest.approx(20.0)
    assert breaker.snapshot().refused == 1


async def test_open_breaker_half_opens_after_the_reset_timeout(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=30, clock=clock)
    await record_failures(breaker, 1)
    clock.advance(29.9)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.retry_after_s == 0.0


# --- half-open -------------------------------------------------------------------------------


async def test_a_successful_probe_closes_the_breaker(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=30, clock=clock)
    await record_failures(breaker, 2)
    clock.advance(30)
    assert await breaker.call(succeed) == "ok"
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().consecutive_failures == 0
    await record_failures(breaker, 1)  # counting starts afresh
    assert breaker.state is BreakerState.CLOSED


async def test_a_failed_probe_reopens_for_a_full_reset_timeout(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=30, clock=clock)
    await record_failures(breaker, 2)
    clock.advance(45)
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after_s == pytest.approx(30.0)


async def test_closing_needs_as_many_successful_probes_as_half_open_max_calls(
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, half_open_max_calls=3, clock=clock)
    await record_failures(breaker, 1)
    clock.advance(60)
    for _ in range(2):
        await breaker.call(succeed)
        assert breaker.state is BreakerState.HALF_OPEN
    await breaker.call(succeed)
    assert breaker.state is BreakerState.CLOSED


async def test_one_failed_probe_among_several_reopens(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, half_open_max_calls=3, clock=clock)
    await record_failures(breaker, 1)
    clock.advance(60)
    await breaker.call(succeed)
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.OPEN


async def test_an_ignored_probe_error_returns_the_permit(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    await record_failures(breaker, 1)
    clock.advance(60)
    with pytest.raises(ProviderBadRequestError):
        await breaker.call(raiser(ProviderBadRequestError("400")))
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot().half_open_in_flight == 0
    assert await breaker.call(succeed) == "ok"  # the next probe is admitted
    assert breaker.state is BreakerState.CLOSED


# --- manual control --------------------------------------------------------------------------


async def test_force_open_refuses_until_reset(clock: FakeClock) -> None:
    breaker = CircuitBreaker(reset_timeout=30, clock=clock)
    breaker.force_open()
    clock.advance(1000)  # a forced breaker never half-opens by itself
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(succeed)
    assert info.value.retry_after_s == 30.0
    assert breaker.state is BreakerState.FORCED_OPEN
    breaker.reset()
    assert await breaker.call(succeed) == "ok"


async def test_disabled_breaker_allows_everything_and_records_nothing(clock: FakeClock) -> None:
    listener = RecordingListener()
    breaker = CircuitBreaker(failure_threshold=1, clock=clock, listeners=[listener])
    breaker.disable()
    await record_failures(breaker, 5)
    assert await breaker.call(succeed) == "ok"
    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.DISABLED
    assert (snapshot.failures, snapshot.successes, snapshot.consecutive_failures) == (0, 0, 0)
    assert listener.calls == []
    breaker.reset()
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.OPEN


async def test_reset_closes_an_open_breaker_and_clears_counts(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    await record_failures(breaker, 2)
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.CLOSED


# --- listeners -------------------------------------------------------------------------------


async def test_listeners_see_every_transition_and_call(clock: FakeClock) -> None:
    listener = RecordingListener()
    breaker = CircuitBreaker(failure_threshold=1, clock=clock, listeners=[listener])
    await record_failures(breaker, 1)
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)
    clock.advance(60)
    await breaker.call(succeed)
    assert listener.transitions == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert listener.calls == [CallOutcome.FAILURE, CallOutcome.REFUSED, CallOutcome.SUCCESS]


async def test_a_failing_listener_never_breaks_the_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(RecordingListener):
        def on_call(self, breaker: CircuitBreaker, outcome: CallOutcome, duration_s: float) -> None:
            raise RuntimeError("listener bug")

        def on_state_change(
            self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState
        ) -> None:
            raise RuntimeError("listener bug")

    after = RecordingListener()
    breaker = CircuitBreaker(failure_threshold=1, clock=clock, listeners=[Broken()])
    breaker.add_listener(after)
    with caplog.at_level(logging.ERROR):
        assert await breaker.call(succeed) == "ok"
        await record_failures(breaker, 1)
    assert breaker.state is BreakerState.OPEN
    assert after.calls == [CallOutcome.SUCCESS, CallOutcome.FAILURE]  # later listeners still run
    assert "listener failed" in caplog.text


async def test_listener_durations_come_from_the_clock(clock: FakeClock) -> None:
    durations: list[float] = []

    class Timing(RecordingListener):
        def on_call(self, breaker: CircuitBreaker, outcome: CallOutcome, duration_s: float) -> None:
            durations.append(duration_s)

    async def slow() -> None:
        await clock.sleep(2.5)

    await CircuitBreaker(clock=clock, listeners=[Timing()]).call(slow)
    assert durations == [2.5]


# --- decorator and context managers ----------------------------------------------------------


async def test_decorates_async_functions(clock: FakeClock) -> None:
    @CircuitBreaker(failure_threshold=2, reset_timeout=60, clock=clock)
    async def fetch(value: int) -> int:
        """Docs."""
        if value < 0:
            raise ProviderUnavailableError("500")
        return value * 2

    assert await fetch(21) == 42
    assert fetch.__doc__ == "Docs."
    for _ in range(2):
        with pytest.raises(ProviderUnavailableError):
            await fetch(-1)
    with pytest.raises(CircuitOpenError) as info:
        await fetch(1)
    assert info.value.breaker.endswith("fetch")


def test_decorates_sync_functions() -> None:
    clock = FakeClock()
    calls = 0

    @CircuitBreaker(failure_threshold=2, clock=clock, name="sync-fn")
    def fetch(fail: bool) -> str:
        nonlocal calls
        calls += 1
        if fail:
            raise ConnectionResetError
        return "ok"

    assert fetch(False) == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionResetError):
            fetch(True)
    with pytest.raises(CircuitOpenError, match="sync-fn"):
        fetch(False)
    assert calls == 3


async def test_async_with_counts_the_block(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    async with breaker:
        pass
    with pytest.raises(ProviderUnavailableError):
        async with breaker:
            raise ProviderUnavailableError("500")
    ran = False
    with pytest.raises(CircuitOpenError):
        async with breaker:
            ran = True
    assert not ran
    assert breaker.snapshot().successes == 1


async def test_async_with_permits_are_per_task(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, half_open_max_calls=2, clock=clock)
    await record_failures(breaker, 1)
    clock.advance(60)
    gate = asyncio.Event()

    async def probe(fail: bool) -> None:
        async with breaker:
            await gate.wait()
            if fail:
                raise ProviderUnavailableError("500")

    ok = asyncio.create_task(probe(False))
    bad = asyncio.create_task(probe(True))
    await asyncio.sleep(0)
    assert breaker.snapshot().half_open_in_flight == 2
    gate.set()
    await ok
    with pytest.raises(ProviderUnavailableError):
        await bad
    assert breaker.state is BreakerState.OPEN  # the failing task's own permit was released


def test_sync_with_counts_the_block() -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=FakeClock())
    with pytest.raises(TimeoutError), breaker:
        raise TimeoutError
    assert breaker.state is BreakerState.OPEN


# --- concurrency -----------------------------------------------------------------------------


def test_counts_are_exact_across_threads() -> None:
    breaker = CircuitBreaker(failure_threshold=10**9, clock=FakeClock())

    @breaker
    def work(fail: bool) -> None:
        if fail:
            raise OSError

    def run() -> None:
        for i in range(500):
            with contextlib.suppress(OSError):
                work(i % 2 == 0)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures) == (2000, 2000)


async def test_counts_are_exact_across_tasks(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=10**9, clock=clock)

    async def work(fail: bool) -> None:
        await asyncio.sleep(0)
        if fail:
            raise ProviderUnavailableError("500")

    results = await asyncio.gather(
        *(breaker.call(work, i % 3 == 0) for i in range(300)), return_exceptions=True
    )
    assert sum(isinstance(r, ProviderUnavailableError) for r in results) == 100
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures, snapshot.consecutive_failures) == (200, 100, 0)


async def test_outcomes_of_calls_from_an_earlier_state_are_not_counted(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    gate = asyncio.Event()

    async def slow_failure() -> None:
        await gate.wait()
        raise ProviderUnavailableError("late")

    task = asyncio.create_task(breaker.call(slow_failure))
    await asyncio.sleep(0)
    await record_failures(breaker, 1)  # opens
    breaker.reset()  # a new closed period
    gate.set()
    with pytest.raises(ProviderUnavailableError):
        await task
    assert breaker.state is BreakerState.CLOSED  # the late failure belonged to the old period


# --- configuration and storage ---------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"failure_threshold": 0},
        {"reset_timeout": 0},
        {"reset_timeout": float("inf")},  # a fleet keeps it in milliseconds: no infinity
        {"reset_timeout": float("nan")},
        {"half_open_max_calls": 0},
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 1.5},
        {"slow_call_rate_threshold": 0},
        {"slow_call_duration_s": -1},
        {"slow_call_duration_s": float("inf")},
        {"window_size": 0},
        {"window_type": "sliding"},
        {"minimum_calls": 0},
        {"window_size": 5, "minimum_calls": 6},
    ],
)
def test_invalid_options_raise_configuration_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="circuit breaker"):
        CircuitBreaker(**options)


@pytest.mark.parametrize("ttl_s", [0, -1, float("inf"), float("nan")])
def test_a_forced_state_needs_a_finite_ttl_or_none(ttl_s: float) -> None:
    breaker = CircuitBreaker()
    for force in (breaker.force_open, breaker.disable):
        with pytest.raises(ConfigurationError, match="ttl_s must be a finite number > 0"):
            force(ttl_s=ttl_s)
    assert breaker.state is BreakerState.CLOSED


def test_from_config_uses_settings_defaults_and_yaml_overrides() -> None:
    settings = FrameworkSettings(
        breaker_failure_threshold=7, breaker_reset_timeout_s=12, breaker_half_open_max_calls=2
    )
    plain = CircuitBreaker.from_config("m", settings)
    assert (plain._failure_threshold, plain._reset_timeout, plain._half_open_max_calls) == (
        7,
        12.0,
        2,
    )
    tuned = CircuitBreaker.from_config(
        "m", settings, BreakerConfig(failure_threshold=3, failure_rate_threshold=0.5)
    )
    assert tuned.name == "m"
    assert (tuned._failure_threshold, tuned._failure_rate, tuned._reset_timeout) == (3, 0.5, 12.0)


def test_from_config_names_the_model_in_errors() -> None:
    with pytest.raises(ConfigurationError, match="model 'm': circuit_breaker: minimum_calls"):
        CircuitBreaker.from_config(
            "m", FrameworkSettings(), BreakerConfig(window_size=3, minimum_calls=4)
        )


async def test_breakers_sharing_a_store_share_the_state(clock: FakeClock) -> None:
    store = InMemoryBreakerStore()
    first = CircuitBreaker(name="gpt", failure_threshold=1, clock=clock, store=store)
    second = CircuitBreaker(name="gpt", failure_threshold=1, clock=clock, store=store)
    await record_failures(first, 1)
    with pytest.raises(CircuitOpenError):
        await second.call(succeed)
    clock.advance(60)
    await second.call(succeed)  # the second breaker's probe closes it for both
    assert first.state is BreakerState.CLOSED
    assert await first.call(succeed) == "ok"


async def test_a_lost_compare_and_set_adopts_the_stored_state(clock: FakeClock) -> None:
    class Racing(InMemoryBreakerStore):
        """Another process forces the breaker open just before our transition."""

        def compare_and_set(self, name: str, expected: BreakerRecord, new: BreakerRecord) -> bool:
            if new.state is BreakerState.OPEN and expected.state is BreakerState.CLOSED:
                rival = BreakerRecord(BreakerState.FORCED_OPEN, generation=expected.generation + 1)
                super().compare_and_set(name, expected, rival)
            return super().compare_and_set(name, expected, new)

    listener = RecordingListener()
    breaker = CircuitBreaker(failure_threshold=1, clock=clock, store=Racing(), listeners=[listener])
    await record_failures(breaker, 1)
    assert breaker.state is BreakerState.FORCED_OPEN
    assert listener.transitions == []  # we did not make that transition


def test_repr_names_the_breaker_and_state() -> None:
    assert repr(CircuitBreaker(name="gpt")) == "CircuitBreaker(name='gpt', state='closed')"


async def test_a_listener_added_mid_call_sees_a_zero_duration_for_that_call() -> None:
    clock = FakeClock(start=1000.0)
    durations: list[float] = []

    class Timing(RecordingListener):
        def on_call(self, breaker: CircuitBreaker, outcome: CallOutcome, duration_s: float) -> None:
            durations.append(duration_s)

    breaker = CircuitBreaker(clock=clock)
    gate = asyncio.Event()

    async def wait() -> None:
        await gate.wait()

    task = asyncio.create_task(breaker.call(wait))
    await asyncio.sleep(0)
    breaker.add_listener(Timing())
    clock.advance(3)
    gate.set()
    await task

    async def three_seconds() -> None:
        await clock.sleep(3)

    await breaker.call(three_seconds)
    assert durations == [0.0, 3.0]


async def test_a_forced_state_records_who_and_why_and_ends_with_its_ttl(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    breaker.force_open(ttl_s=30, by="ops", reason="provider maintenance")
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)
    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.FORCED_OPEN
    assert snapshot.forced is not None
    assert (snapshot.forced.by, snapshot.forced.reason, snapshot.forced.ttl_s) == (
        "ops",
        "provider maintenance",
        30,
    )
    assert snapshot.opened_because == "forced open by ops: provider maintenance"
    assert breaker.retry_after_s == 30
    clock.advance(29)
    assert breaker.state is BreakerState.FORCED_OPEN
    clock.advance(2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().forced is None
    assert await breaker.call(succeed) == "ok"


async def test_a_forced_state_without_ttl_lasts_until_reset(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    breaker.disable(by="ops", reason="flapping provider health check")
    clock.advance(1e6)
    assert breaker.state is BreakerState.DISABLED
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED
