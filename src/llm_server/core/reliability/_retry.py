"""One retry loop for model calls: exponential backoff with full jitter.

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

Why a loop of its own (this was tenacity's ``AsyncRetrying`` before): tenacity's frames hold
the failed attempt's error (its retry state, ``RetryError.reraise``) while that error's
traceback holds them, a reference cycle per failed request; the request's frames then waited
for the garbage collector's rare full collections (tens of MiB in a fault storm). This loop
keeps no such reference, and the success path builds nothing at all.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

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
    if first_error is None:
        try:
            return await fn()
        except Exception as exc:
            first_error = exc
    the_clock = clock or SYSTEM_CLOCK
    error: Exception | None = first_error
    first_error = None  # from here on `error` is this frame's one reference to it
    attempt = 1
    while error is not None:
        delay_s = _delay_s(error, attempt, policy, rng or _default_rng)
        if delay_s is None or (
            attempt >= policy.max_attempts
            or (deadline is not None and the_clock.monotonic() + delay_s >= deadline)
            or (should_stop is not None and should_stop())
        ):
            try:
                raise error
            finally:  # this frame would hold the error whose traceback holds it: a cycle
                error = None
        await the_clock.sleep(delay_s)
        if on_retry is not None:
            # Reported when the retry really starts: a backoff cut short by the deadline (or
            # a cancellation) sends nothing and is no retry.
            try:
                on_retry(attempt, error, delay_s)
            except Exception:
                _log.exception("retry listener failed")
        attempt += 1
        error = None
        try:
            return await fn()
        except Exception as exc:
            error = exc
    raise AssertionError("unreachable: the loop returns or raises")


def _delay_s(
    error: Exception, attempt: int, policy: RetryPolicy, rng: random.Random
) -> float | None:
    """The wait before retrying after attempt ``attempt`` failed with ``error``; ``None``
    when the error rules a retry out (rules 1 to 3 of the module docstring, bar the count,
    the deadline and ``should_stop``)."""
    if not is_retryable(error):
        return None
    if isinstance(error, RateLimitedError) and error.retry_after_s is not None:
        if error.retry_after_s > policy.retry_after_cap_s:
            return None
        return max(0.0, error.retry_after_s)
    return policy.backoff_s(attempt - 1, rng)


def _pick(override: N | None, default: N) -> N:
    return default if override is None else override
