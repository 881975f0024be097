"""The retry loop: full-jitter backoff, Retry-After, what is retried, and when it stops."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from _reliability_helpers import Flaky

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import (
    CircuitOpenError,
    ConfigurationError,
    ModelTimeoutError,
    OutputParseError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderUnavailableError,
    RateLimitedError,
)
from llm_server.core.model_config import RetryConfig
from llm_server.core.reliability import RetryPolicy, is_retryable
from llm_server.core.reliability._retry import retry_call
from llm_server.testing import FakeClock

pytestmark = pytest.mark.anyio


def outage(count: int) -> list[BaseException]:
    return [ProviderUnavailableError(f"500 #{i}") for i in range(count)]


POLICY = RetryPolicy(max_attempts=5, initial_backoff_s=1.0, max_backoff_s=6.0, retry_after_cap_s=10)


@pytest.mark.parametrize("retry_number", range(8))
def test_backoff_stays_within_the_full_jitter_bounds(retry_number: int) -> None:
    rng = random.Random(retry_number)
    ceiling = min(6.0, 1.0 * 2**retry_number)
    samples = [POLICY.backoff_s(retry_number, rng) for _ in range(2000)]
    assert all(0.0 <= s <= ceiling for s in samples)
    # full jitter spreads over the whole range (not "half the ceiling plus jitter")
    assert min(samples) < 0.05 * ceiling
    assert max(samples) > 0.95 * ceiling


async def test_retries_until_success_sleeping_the_seeded_backoffs() -> None:
    clock = FakeClock()
    flaky = Flaky(*outage(3))
    result = await retry_call(flaky, policy=POLICY, clock=clock, rng=random.Random(7))
    assert result == "ok"
    assert flaky.calls == 4
    expected_rng = random.Random(7)
    expected = [expected_rng.uniform(0, min(6.0, 2.0**n)) for n in range(3)]
    assert clock.sleeps == pytest.approx(expected)
    assert clock.monotonic() == pytest.approx(sum(expected))


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    flaky = Flaky(*outage(10))
    with pytest.raises(ProviderUnavailableError, match="500 #4"):
        await retry_call(flaky, policy=POLICY, clock=FakeClock(), rng=random.Random(1))
    assert flaky.calls == 5


async def test_a_first_error_made_by_the_caller_counts_as_attempt_one() -> None:
    clock = FakeClock()
    flaky = Flaky(*outage(2))
    first = ProviderUnavailableError("500 before")
    result = await retry_call(
        flaky, policy=POLICY, clock=clock, rng=random.Random(7), first_error=first
    )
    assert result == "ok"
    assert flaky.calls == 3  # attempts 2, 3 and 4
    assert len(clock.sleeps) == 3


async def test_a_first_error_exhausts_the_same_attempt_budget() -> None:
    flaky = Flaky(*outage(10))
    with pytest.raises(ProviderUnavailableError, match="500 #3"):
        await retry_call(
            flaky,
            policy=POLICY,
            clock=FakeClock(),
            first_error=ProviderUnavailableError("500 before"),
        )
    assert flaky.calls == 4  # 5 attempts in all


async def test_a_first_error_that_is_not_retryable_is_raised_without_a_call() -> None:
    flaky = Flaky()
    with pytest.raises(ProviderAuthError, match="bad key"):
        await retry_call(
            flaky, policy=POLICY, clock=FakeClock(), first_error=ProviderAuthError("bad key")
        )
    assert flaky.calls == 0


async def test_one_attempt_means_no_retries() -> None:
    flaky = Flaky(*outage(1))
    with pytest.raises(ProviderUnavailableError):
        await retry_call(flaky, policy=RetryPolicy(max_attempts=1), clock=FakeClock())
    assert flaky.calls == 1


@pytest.mark.parametrize(
    "error",
    [
        ProviderAuthError("401"),
        ProviderBadRequestError("400"),
        OutputParseError("garbled"),
        CircuitOpenError("m", 30.0),
        ValueError("bug"),
        TimeoutError(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_non_retryable_errors_are_raised_at_once(error: Exception) -> None:
    clock = FakeClock()
    flaky = Flaky(error)
    with pytest.raises(type(error)):
        await retry_call(flaky, policy=POLICY, clock=clock)
    assert flaky.calls == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "error",
    [ProviderUnavailableError("503"), ModelTimeoutError("slow"), RateLimitedError("429")],
    ids=lambda e: type(e).__name__,
)
async def test_retryable_errors_are_retried(error: Exception) -> None:
    assert is_retryable(error)
    flaky = Flaky(error)
    assert await retry_call(flaky, policy=POLICY, clock=FakeClock()) == "ok"
    assert flaky.calls == 2


async def test_cancellation_is_never_retried() -> None:
    flaky = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await retry_call(flaky, policy=POLICY, clock=FakeClock())
    assert flaky.calls == 1


async def test_retry_after_is_honoured_exactly() -> None:
    clock = FakeClock()
    flaky = Flaky(RateLimitedError("429", retry_after_s=7.5))
    assert await retry_call(flaky, policy=POLICY, clock=clock) == "ok"
    assert clock.sleeps == [7.5]  # not the 0-1 s backoff


async def test_a_retry_after_above_the_cap_ends_the_retries() -> None:
    clock = FakeClock()
    flaky = Flaky(RateLimitedError("429", retry_after_s=10.5))
    with pytest.raises(RateLimitedError):
        await retry_call(flaky, policy=POLICY, clock=clock)
    assert flaky.calls == 1
    assert clock.sleeps == []


async def test_a_deadline_that_would_pass_during_the_backoff_stops_retrying() -> None:
    clock = FakeClock(start=100.0)
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=4.0, max_backoff_s=4.0)
    flaky = Flaky(RateLimitedError("429", retry_after_s=3.0), *outage(5))
    with pytest.raises(ProviderUnavailableError):
        # 3 s Retry-After fits before t=105; the next wait (exactly 4 s, rng pinned) does not
        await retry_call(flaky, policy=policy, clock=clock, deadline=105.0, rng=_MaxRng())
    assert flaky.calls == 2
    assert clock.sleeps == [3.0]


async def test_should_stop_ends_the_retries() -> None:
    stop_now = False

    def should_stop() -> bool:
        return stop_now

    async def fails_then_opens() -> str:
        nonlocal stop_now
        stop_now = flaky.calls >= 1
        return await flaky()

    flaky = Flaky(*outage(5))
    with pytest.raises(ProviderUnavailableError):
        await retry_call(
            fails_then_opens, policy=POLICY, clock=FakeClock(), should_stop=should_stop
        )
    assert flaky.calls == 2


async def test_on_retry_reports_each_retry_and_may_fail_safely(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[int, str, float]] = []

    def on_retry(attempt: int, error: BaseException, delay_s: float) -> None:
        seen.append((attempt, str(error), delay_s))
        raise RuntimeError("listener bug")

    clock = FakeClock()
    with caplog.at_level(logging.ERROR):
        result = await retry_call(
            Flaky(*outage(2)), policy=POLICY, clock=clock, rng=random.Random(3), on_retry=on_retry
        )
    assert result == "ok"
    assert [(a, e) for a, e, _ in seen] == [(1, "500 #0"), (2, "500 #1")]
    assert [d for _, _, d in seen] == clock.sleeps
    assert "retry listener failed" in caplog.text


def test_policy_from_settings_and_yaml_overrides() -> None:
    settings = FrameworkSettings(retry_max_attempts=4, retry_initial_backoff_s=0.25)
    assert RetryPolicy.from_config(settings) == RetryPolicy(4, 0.25, 8.0, 30.0)
    tuned = RetryPolicy.from_config(settings, RetryConfig(max_attempts=2, retry_after_cap_s=5))
    assert tuned == RetryPolicy(2, 0.25, 8.0, 5.0)


@pytest.mark.parametrize(
    "options", [{"max_attempts": 0}, {"initial_backoff_s": -1}, {"retry_after_cap_s": -0.1}]
)
def test_invalid_policy_raises_configuration_error(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match="retry"):
        RetryPolicy(**options)  # type: ignore[arg-type]


class _MaxRng(random.Random):
    """Always picks the top of the range, so backoffs are exactly their ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b
