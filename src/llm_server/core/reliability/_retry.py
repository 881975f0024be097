"""One retry loop for model calls: exponential backoff with full jitter, built on tenacity.

The rules, in the order they are checked after a failed attempt:

1. only errors that say so are retried: :class:`~llm_server.core.errors.ModelCallError` with
   ``retryable`` set (provider unavailable, model timeout, rate limited). A refusal by an open
   circuit breaker (:class:`~llm_server.core.errors.CircuitOpenError`) is never retried;
2. the wait before retry ``n`` (0-based) is ``uniform(0, min(max_backoff_s,
   initial_backoff_s * 2**n))`` ("full jitter"), except after a 429 whose ``Retry-After`` is
   known: then the wait is exactly ``retry_after_s``;
3. the retries stop, and the last error is re-raised, when ``max_attempts`` were made, when a
   ``Retry-After`` is longer than ``retry_after_cap_s``, when the deadline would pass before
   the next attempt could start, or when ``should_stop()`` says so (e.g. the breaker opened).

Time, sleeping and randomness are injected, so tests never really sleep.

Why tenacity: ``AsyncRetrying`` accepts our own ``wait``, ``stop``, ``retry`` and ``sleep``
callables and re-raises the original error (``reraise=True``), which covers every rule above
without a hand-written loop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from llm_server.core.clock import SYSTEM_CLOCK, Clock
from llm_server.core.errors import ConfigurationError, ModelCallError, RateLimitedError

if TYPE_CHECKING:
    from llm_server.core.config import FrameworkSettings
    from llm_server.core.model_config import RetryConfig

__all__ = ["RetryPolicy", "is_retryable", "retry_call"]

T = TypeVar("T")
N = TypeVar("N", int, float)
OnRetry = Callable[[int, BaseException, float], None]
"""``on_retry(attempt, error, delay_s)``: attempt ``attempt`` (1-based) failed with ``error``;
the next one starts in ``delay_s`` seconds."""

_log = logging.getLogger(__name__)


def is_retryable(exc: BaseException) -> bool:
    """Whether trying again may succeed: a :class:`ModelCallError` marked ``retryable``."""
    return isinstance(exc, ModelCallError) and exc.retryable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a model call is retried.

    Attributes:
        max_attempts: Attempts in total, the first included (1 disables retries).
        initial_backoff_s: Upper bound of the first backoff; doubles with each retry.
        max_backoff_s: Upper bound of any backoff.
        retry_after_cap_s: Longest provider ``Retry-After`` honoured; a longer one ends the
            retries and re-raises the rate-limit error.

    Raises:
        ConfigurationError: A value is out of range.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    retry_after_cap_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"retry: max_attempts must be >= 1 (got {self.max_attempts})")
        for label in ("initial_backoff_s", "max_backoff_s", "retry_after_cap_s"):
            if getattr(self, label) < 0:
                raise ConfigurationError(
                    f"retry: {label} must be >= 0 (got {getattr(self, label)})"
                )

    @classmethod
    def from_config(
        cls, settings: FrameworkSettings, config: RetryConfig | None = None
    ) -> RetryPolicy:
        """The settings' ``retry_*`` defaults with a model's YAML ``retry:`` overrides applied."""
        s = settings
        if config is None:
            return cls(
                s.retry_max_attempts,
                s.retry_initial_backoff_s,
                s.retry_max_backoff_s,
                s.retry_after_cap_s,
            )
        c = config
        return cls(
            max_attempts=_pick(c.max_attempts, s.retry_max_attempts),
            initial_backoff_s=_pick(c.initial_backoff_s, s.retry_initial_backoff_s),
            max_backoff_s=_pick(c.max_backoff_s, s.retry_max_backoff_s),
            retry_after_cap_s=_pick(c.retry_after_cap_s, s.retry_after_cap_s),
        )

    def backoff_s(self, retry_number: int, rng: random.Random | None = None) -> float:
        """The full-jitter wait before retry ``retry_number`` (0 for the first retry)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2.0**retry_number)
        return (rng or _default_rng).uniform(0.0, ceiling)


_default_rng = random.Random()


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    deadline: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_retry: OnRetry | None = None,
    first_error: Exception | None = None,
) -> T:
    """Await ``fn()`` and retry it by the rules of the module docstring.

    Args:
        fn: Makes one attempt.
        policy: Attempts and backoffs.
        clock: Time source and sleep (a ``FakeClock`` in tests).
        rng: Source of the jitter (seed one in tests).
        deadline: Clock time after which no attempt may start.
        should_stop: Checked before each retry; ``True`` ends the retries.
        on_retry: Called when a retry starts, after its backoff, with the failed attempt's
            number and error and the backoff slept; its exceptions are logged and swallowed.
        first_error: The error of a first attempt the caller already made (it counts as
            attempt 1; ``fn`` then makes attempts 2, 3, ...).

    Returns:
        The result of the first successful attempt.

    Raises:
        BaseException: The last attempt's error, unchanged, when the retries end.
    """
    # The success path skips tenacity: building and driving an ``AsyncRetrying`` cost ~100 us
    # per call here, the library's largest per-request cost. A failed first attempt is
    # replayed into tenacity as its attempt 1, so every rule above applies unchanged.
    if first_error is None:
        try:
            return await fn()
        except Exception as exc:
            first_error = exc
    if not is_retryable(first_error):
        raise first_error
    replayed = False
    pending: tuple[int, BaseException, float] | None = None  # the retry the backoff leads to

    async def attempt() -> T:
        nonlocal replayed, pending
        if not replayed:
            replayed = True
            raise first_error
        if pending is not None and on_retry is not None:
            # Reported when the retry really starts: a backoff cut short by the deadline (or
            # a cancellation) sends nothing and is no retry.
            try:
                on_retry(*pending)
            except Exception:
                _log.exception("retry listener failed")
        pending = None
        return await fn()

    the_clock = clock or SYSTEM_CLOCK
    the_rng = rng or _default_rng

    def wait(state: RetryCallState) -> float:
        error = _error(state)
        if isinstance(error, RateLimitedError) and error.retry_after_s is not None:
            return max(0.0, error.retry_after_s)
        return policy.backoff_s(state.attempt_number - 1, the_rng)

    def stop(state: RetryCallState) -> bool:
        error = _error(state)
        if state.attempt_number >= policy.max_attempts:
            return True
        if (
            isinstance(error, RateLimitedError)
            and error.retry_after_s is not None
            and error.retry_after_s > policy.retry_after_cap_s
        ):
            return True
        if deadline is not None and the_clock.monotonic() + state.upcoming_sleep >= deadline:
            return True
        return should_stop is not None and should_stop()

    def before_sleep(state: RetryCallState) -> None:
        nonlocal pending
        pending = (state.attempt_number, _error(state), state.upcoming_sleep)

    retrying = AsyncRetrying(
        sleep=the_clock.sleep,
        stop=stop,
        wait=wait,
        retry=retry_if_exception(is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retrying(attempt)


def _error(state: RetryCallState) -> BaseException:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    if error is None:  # tenacity asks wait/stop only after a failed attempt
        raise AssertionError("retry state without an error")
    return error


def _pick(override: N | None, default: N) -> N:
    return default if override is None else override
