"""Per-model rate limits in one process: the sliding window counter, waits, settlement."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from llm_server.core.errors import RateLimitedError, RateLimitExceededError
from llm_server.core.model_config import ModelConfig
from llm_server.core.rate_limit import WINDOW_S, LocalLimitCounters, RateLimiter, wait_for
from llm_server.testing import FakeClock

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("prev", "cur", "elapsed", "cost", "cap", "expected"),
    [
        (0, 0, 0, 1, 10, 0.0),  # empty: fits
        (0, 9, 30, 1, 10, 0.0),  # exactly the cap
        (0, 10, 30, 1, 10, 30.0 + 6.0),  # after the window ends: 10 * (1 - t/60) <= 9
        (20, 0, 30, 1, 10, 3.0),  # the previous window fades: 20 * (30 - t) / 60 + 1 <= 10
        (0, 0, 0, 11, 10, -1.0),  # larger than the whole limit: never
        (5, 5, 0, 0, 10, 0.0),  # costs nothing
    ],
)
def test_wait_for_is_the_time_until_the_weighted_count_leaves_room(  # noqa: PLR0917 -- parametrized
    prev: float, cur: float, elapsed: float, cost: int, cap: int, expected: float
) -> None:
    wait = wait_for(prev, cur, elapsed, cost=cost, cap=cap, window=WINDOW_S)
    assert wait == pytest.approx(expected)


def test_the_wait_really_leaves_room() -> None:
    # at the answered time the weighted count plus the cost fits, a moment before it did not
    for prev, cur, elapsed, cost, cap in [
        (40, 20, 10, 5, 50),
        (0, 50, 59, 1, 50),
        (50, 1, 1, 9, 50),
    ]:
        wait = wait_for(prev, cur, elapsed, cost=cost, cap=cap, window=60)
        assert wait > 0

        def weighted(
            t: float, prev: float = prev, cur: float = cur, elapsed: float = elapsed
        ) -> float:
            at = elapsed + t
            if at < 60:
                return prev * (60 - at) / 60 + cur
            return cur * (120 - at) / 60  # the next window: cur fades, nothing new

        assert weighted(wait) + cost <= cap + 1e-9
        assert weighted(wait - 0.01) + cost > cap


def limiter(clock: FakeClock, **options: object) -> RateLimiter:
    options.setdefault("requests_per_minute", 3)
    return RateLimiter(
        "gpt-4o-mini",
        counters=LocalLimitCounters(clock=clock),
        clock=clock,
        **options,  # type: ignore[arg-type]
    )


async def test_a_call_beyond_the_limit_is_refused_with_the_wait(clock: FakeClock) -> None:
    limit = limiter(clock)
    for _ in range(3):
        await limit.acquire()
    with pytest.raises(RateLimitExceededError) as caught:
        await limit.acquire()
    error = caught.value
    assert isinstance(error, RateLimitedError)  # a 429 through the error handlers
    assert error.retry_after_s is not None
    assert 0 < error.retry_after_s <= 2 * WINDOW_S
    assert error.limit == "requests_per_minute"
    assert error.fleet is False
    assert not error.retryable
    assert "3 requests_per_minute" in error.message
    assert "not sent" in error.message
    assert limit.refused_local == 1


async def test_a_call_waits_for_capacity_up_to_max_wait(clock: FakeClock) -> None:
    limit = limiter(clock, requests_per_minute=2, max_wait_s=120)
    await limit.acquire()
    await limit.acquire()
    start = clock.monotonic()
    await limit.acquire()  # waits (the fake clock advances)
    waited = clock.monotonic() - start
    # both calls counted in this window: the next fits once it ended and half the next passed
    assert waited == pytest.approx(90, abs=0.06)  # (+ up to 50 ms of jitter)


async def test_the_request_deadline_bounds_the_wait(clock: FakeClock) -> None:
    deadline = clock.monotonic() + 1.0
    limit = RateLimiter(
        "m",
        requests_per_minute=1,
        max_wait_s=120,
        counters=LocalLimitCounters(clock=clock),
        clock=clock,
        deadline=lambda: deadline,
    )
    await limit.acquire()
    with pytest.raises(RateLimitExceededError):
        await limit.acquire()
    assert clock.monotonic() == 0.0  # refused at once: the wait could not end in time


async def test_tokens_are_reserved_then_settled_to_the_reported_usage(clock: FakeClock) -> None:
    limit = limiter(clock, requests_per_minute=None, tokens_per_minute=1000)
    grant = await limit.acquire(600)  # prompt + max_tokens
    with pytest.raises(RateLimitExceededError) as caught:
        await limit.acquire(600)
    assert caught.value.limit == "tokens_per_minute"
    limit.settle(grant, sent=True, tokens_used=150)  # the provider reported 150
    await limit.acquire(600)  # 150 + 600 fits


async def test_a_call_that_was_never_sent_gives_everything_back(clock: FakeClock) -> None:
    limit = limiter(clock, requests_per_minute=1, tokens_per_minute=100)
    grant = await limit.acquire(50)
    limit.settle(grant, sent=False, tokens_used=0)  # e.g. a cache hit
    await limit.acquire(50)


async def test_a_call_larger_than_the_limit_is_refused_with_the_reason(clock: FakeClock) -> None:
    limit = limiter(clock, requests_per_minute=None, tokens_per_minute=1000, max_wait_s=60)
    with pytest.raises(RateLimitExceededError, match="can never fit") as caught:
        await limit.acquire(5000)
    assert caught.value.retry_after_s is None
    assert clock.monotonic() == 0.0


async def test_limits_count_per_minute_windows(clock: FakeClock) -> None:
    limit = limiter(clock, requests_per_minute=60)
    for _ in range(60):
        await limit.acquire()
    clock.advance(2 * WINDOW_S)  # both windows passed: all capacity is back
    for _ in range(60):
        await limit.acquire()


def test_a_rate_limit_must_limit_something() -> None:
    with pytest.raises(ValidationError, match="requests_per_minute, tokens_per_minute or both"):
        ModelConfig.model_validate({"model_name": "openai/m", "rate_limit": {"max_wait_s": 1}})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ModelConfig.model_validate(
            {"model_name": "openai/m", "rate_limit": {"requests_per_minute": 0}}
        )
    config = ModelConfig.model_validate(
        {"model_name": "openai/m", "rate_limit": {"requests_per_minute": 500, "max_wait_s": 2}}
    )
    assert config.rate_limit is not None
    assert config.rate_limit.tokens_per_minute is None
    assert math.isclose(config.rate_limit.max_wait_s, 2)
