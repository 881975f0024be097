"""``retry_call``'s first attempt, made before any retry machinery, and what follows it."""

from __future__ import annotations

import random

import pytest
from _reliability_helpers import Flaky

from llm_server.core.errors import ProviderAuthError, ProviderUnavailableError
from llm_server.core.reliability import RetryPolicy
from llm_server.core.reliability._retry import retry_call
from llm_server.testing import FakeClock


@pytest.mark.anyio
async def test_a_first_attempt_that_succeeds_is_the_only_one() -> None:
    attempts = Flaky()
    assert await retry_call(attempts, policy=RetryPolicy(max_attempts=3)) == "ok"
    assert attempts.calls == 1


@pytest.mark.anyio
async def test_a_non_retryable_first_error_leaves_unchanged() -> None:
    error = ProviderAuthError("401", model_id="m")
    with pytest.raises(ProviderAuthError) as raised:
        await retry_call(Flaky(error), policy=RetryPolicy(max_attempts=3))
    assert raised.value is error


@pytest.mark.anyio
async def test_a_failed_first_attempt_is_attempt_one_of_the_retries() -> None:
    first = ProviderUnavailableError("500", model_id="m")
    attempts = Flaky(first)
    seen: list[tuple[int, BaseException, float]] = []
    clock = FakeClock()
    result = await retry_call(
        attempts,
        policy=RetryPolicy(max_attempts=3, initial_backoff_s=1.0),
        clock=clock,
        rng=random.Random(1),
        on_retry=lambda n, error, delay: seen.append((n, error, delay)),
    )
    assert result == "ok"
    assert attempts.calls == 2
    assert [(n, error) for n, error, _ in seen] == [(1, first)]
    assert 0.0 <= seen[0][2] <= 1.0
    assert clock.monotonic() == pytest.approx(seen[0][2])  # slept exactly the backoff


@pytest.mark.anyio
async def test_one_attempt_only_reraises_the_first_error_itself() -> None:
    first = ProviderUnavailableError("500", model_id="m")
    attempts = Flaky(first, ProviderUnavailableError("never reached"))
    with pytest.raises(ProviderUnavailableError) as raised:
        await retry_call(attempts, policy=RetryPolicy(max_attempts=1), clock=FakeClock())
    assert raised.value is first
    assert attempts.calls == 1


@pytest.mark.anyio
async def test_every_attempt_failing_ends_after_max_attempts_with_the_last_error() -> None:
    errors = [ProviderUnavailableError(f"500 #{i}", model_id="m") for i in range(3)]
    attempts = Flaky(*errors)
    with pytest.raises(ProviderUnavailableError) as raised:
        await retry_call(attempts, policy=RetryPolicy(max_attempts=3), clock=FakeClock())
    assert raised.value is errors[-1]
    assert attempts.calls == 3
