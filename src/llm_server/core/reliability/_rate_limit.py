"""Per-model request and token limits: a sliding window counter, per process or fleet-wide.

The algorithm is the sliding window counter (Cloudflare's; ``limits``' ``sliding-window-
counter``): two fixed one-minute windows, the previous one weighted by the part of it still
inside the last minute. It holds two counters per limit, needs no timestamps per call and errs
by at most a few percent, always on the safe side when traffic is steady.

Why not the ``limits`` package (which implements the same counter): a model call takes a
request *and* tokens, both or neither, in one atomic step (one Redis round trip); the tokens
reserved before the call (prompt + ``max_tokens``) are settled to the provider's reported
usage afterwards, which needs a counter that can be given back; and a caller that may wait
needs the time until enough capacity frees up. ``limits`` hits one limit per call, cannot give
back, and answers the reset time with a second round trip. The arithmetic is the ten lines of
:func:`wait_for`, mirrored by the Lua script of :mod:`llm_server.fleet`.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from llm_server.core.clock import SYSTEM_CLOCK, Clock
from llm_server.core.errors import ConfigurationError, RateLimitExceededError

__all__ = [
    "WINDOW_S",
    "Grant",
    "LimitCounters",
    "LocalLimitCounters",
    "RateLimiter",
    "wait_for",
]

WINDOW_S = 60.0
"""The length of one window: limits are per minute."""
_NEVER = -1.0  # a cost larger than the whole limit never fits


def wait_for(
    prev: float, cur: float, elapsed: float, *, cost: int, cap: int, window: float
) -> float:
    """Seconds until ``cost`` fits under ``cap`` (0: now; -1: never, it exceeds the cap).

    Args:
        prev: The previous window's count.
        cur: The current window's count.
        elapsed: Time since the current window began.
        cost: What the caller wants to take.
        cap: The limit per window.
        window: The window's length.
    """
    if cost <= 0:
        return 0.0
    if cost > cap:
        return _NEVER
    carried = prev * (window - elapsed) / window
    need = carried + cur + cost - cap
    if need <= 0:
        return 0.0
    if prev > 0 and need <= carried:
        return need * window / prev  # the previous window's weight fades linearly
    # only after this window ends: its count becomes the fading one
    return (window - elapsed) + max(0.0, window - (cap - cost) * window / cur)


@dataclass(frozen=True, slots=True)
class Grant:
    """Capacity taken for one call, to settle when it ends.

    Attributes:
        window: The index of the window it was taken in.
        requests: Requests taken (1, or 0 without a request limit).
        tokens: Tokens reserved (0 without a token limit).
        fleet: Whether the fleet's counters (Redis) granted it.
    """

    window: int
    requests: int
    tokens: int
    fleet: bool = False


@runtime_checkable
class LimitCounters(Protocol):
    """Where the counters of every limiter live: this process, or Redis for a fleet."""

    async def take(
        self, key: str, requests: int, tokens: int, caps: tuple[int, int]
    ) -> tuple[float, int, bool]:
        """Take both costs from ``key``'s current window if both fit under ``caps``.

        Args:
            key: The limiter (the model id).
            requests: Requests to take.
            tokens: Tokens to take.
            caps: The requests and tokens per window (0: no such limit).

        Returns:
            Seconds to wait before both could fit (0: taken; -1: never), the window's index,
            and whether the fleet decided.
        """
        ...

    def take_sync(
        self, key: str, requests: int, tokens: int, caps: tuple[int, int]
    ) -> tuple[float, int, bool]:
        """:meth:`take` for a synchronous caller (blocks its thread for a round trip)."""
        ...

    def give_back(self, key: str, window: int, requests: int, tokens: int) -> None:
        """Return (or, negative, take more of) capacity taken in ``window``, without waiting."""
        ...


class LocalLimitCounters:
    """Counters in this process (the default, and a fleet's fallback while Redis is down).

    Args:
        clock: Time source (inject a fake clock in tests).
        share: Divides every cap (a fleet of N processes falling back gives each 1/N).
    """

    def __init__(self, *, clock: Clock | None = None, share: Callable[[], int] | None = None):
        self._clock = clock or SYSTEM_CLOCK
        self._share = share
        self._counts: dict[tuple[str, str, int], float] = {}
        self._lock = threading.Lock()  # sync programs call from worker threads

    async def take(
        self, key: str, requests: int, tokens: int, caps: tuple[int, int]
    ) -> tuple[float, int, bool]:
        """Take both costs if they fit (see :meth:`LimitCounters.take`)."""
        return (*self.take_now(key, requests, tokens, caps), False)

    def take_sync(
        self, key: str, requests: int, tokens: int, caps: tuple[int, int]
    ) -> tuple[float, int, bool]:
        """Take both costs if they fit (from a synchronous caller)."""
        return (*self.take_now(key, requests, tokens, caps), False)

    def take_now(
        self, key: str, requests: int, tokens: int, caps: tuple[int, int]
    ) -> tuple[float, int]:
        """The synchronous body of :meth:`take`: (seconds to wait, window index)."""
        now = self._clock.monotonic()
        index = math.floor(now / WINDOW_S)
        elapsed = now - index * WINDOW_S
        divisor = max(1, self._share()) if self._share is not None else 1
        counts = self._counts
        with self._lock:
            waits = []
            for dim, cost, cap in (("r", requests, caps[0]), ("t", tokens, caps[1])):
                if cap <= 0 or cost <= 0:
                    continue
                prev = counts.get((key, dim, index - 1), 0.0)
                cur = counts.get((key, dim, index), 0.0)
                share = max(1, cap // divisor)
                waits.append(wait_for(prev, cur, elapsed, cost=cost, cap=share, window=WINDOW_S))
            if any(w < 0 for w in waits):
                return _NEVER, index
            wait = max(waits, default=0.0)
            if wait > 0:
                return wait, index
            for dim, cost in (("r", requests), ("t", tokens)):
                if cost:
                    counts[(key, dim, index)] = counts.get((key, dim, index), 0.0) + cost
            for stale in [k for k in counts if k[2] < index - 1]:
                del counts[stale]
        return 0.0, index

    def give_back(self, key: str, window: int, requests: int, tokens: int) -> None:
        """Return capacity to ``window`` (ignored once it no longer counts)."""
        with self._lock:
            for dim, amount in (("r", requests), ("t", tokens)):
                slot = (key, dim, window)
                if amount and slot in self._counts:
                    self._counts[slot] = max(0.0, self._counts[slot] - amount)


class RateLimiter:
    """One model's ``rate_limit:``: requests and tokens per minute, with a bounded wait.

    Args:
        key: The model id (the counters' key).
        requests_per_minute: Requests per minute (``None``: no request limit).
        tokens_per_minute: Tokens per minute, prompt plus completion (``None``: no token limit).
        max_wait_s: How long a call may wait for capacity (never past the request deadline).
        counters: Where the counts live (this process by default).
        clock: Time source and sleep.
        deadline: Reads the current request deadline, in ``clock`` time (``None``: none).

    Raises:
        ConfigurationError: Neither limit is given, or one is below 1.
    """

    def __init__(
        self,
        key: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        max_wait_s: float = 0.0,
        counters: LimitCounters | None = None,
        clock: Clock | None = None,
        deadline: Callable[[], float | None] = lambda: None,
    ) -> None:
        for label, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and value < 1:
                raise ConfigurationError(f"rate limit {key!r}: {label} must be >= 1 (got {value})")
        if requests_per_minute is None and tokens_per_minute is None:
            raise ConfigurationError(
                f"rate limit {key!r}: give requests_per_minute, tokens_per_minute or both"
            )
        self.key = key
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.max_wait_s = max_wait_s
        self.counters: LimitCounters = counters or LocalLimitCounters(clock=clock)
        self._clock = clock or SYSTEM_CLOCK
        self._deadline = deadline
        self._caps = (requests_per_minute or 0, tokens_per_minute or 0)
        self._rng = random.Random()
        self.refused_fleet = 0
        """Calls refused so far on the fleet's counts (for metrics)."""
        self.refused_local = 0
        """Calls refused so far on this process's counts."""

    @property
    def counts_tokens(self) -> bool:
        """Whether calls must say how many tokens they may use."""
        return self._caps[1] > 0

    async def acquire(self, tokens: int = 0) -> Grant:
        """Take one request and ``tokens`` tokens, waiting up to ``max_wait_s`` for them.

        Raises:
            RateLimitExceededError: No capacity in time (the call must not be sent).
        """
        requests = 1 if self._caps[0] else 0
        tokens = tokens if self._caps[1] else 0
        start = self._clock.monotonic()
        while True:
            wait, window, fleet = await self.counters.take(self.key, requests, tokens, self._caps)
            if wait == 0:
                return Grant(window, requests, tokens, fleet)
            await self._clock.sleep(self._pause(wait, start, tokens, fleet))

    def acquire_sync(self, tokens: int = 0) -> Grant:
        """:meth:`acquire` for synchronous calls (a sync program, an optimizer): blocks the
        calling thread while it waits.

        Raises:
            RateLimitExceededError: No capacity in time (the call must not be sent).
        """
        requests = 1 if self._caps[0] else 0
        tokens = tokens if self._caps[1] else 0
        start = self._clock.monotonic()
        while True:
            wait, window, fleet = self.counters.take_sync(self.key, requests, tokens, self._caps)
            if wait == 0:
                return Grant(window, requests, tokens, fleet)
            time.sleep(self._pause(wait, start, tokens, fleet))

    def _pause(self, wait: float, start: float, tokens: int, fleet: bool) -> float:
        """How long to wait before trying again, or the refusal when that is too long."""
        now = self._clock.monotonic()
        budget = self.max_wait_s - (now - start)
        deadline = self._deadline()
        if deadline is not None:
            budget = min(budget, deadline - now)
        if wait < 0 or wait > budget:
            raise self._refusal(wait, tokens, fleet)
        # a little jitter, so callers that waited together do not all come back at once
        return wait + self._rng.uniform(0, min(0.05, budget - wait))

    def settle(self, grant: Grant, *, sent: bool, tokens_used: int | None) -> None:
        """Settle a call: give back what it did not use.

        Args:
            grant: What :meth:`acquire` took.
            sent: Whether the call reached the provider (a cache hit or a call that failed
                before it left gives everything back).
            tokens_used: The provider's reported total tokens (``None``: unknown, keep the
                reservation).
        """
        if not sent:
            self.counters.give_back(self.key, grant.window, grant.requests, grant.tokens)
        elif grant.tokens and tokens_used is not None and tokens_used != grant.tokens:
            self.counters.give_back(self.key, grant.window, 0, grant.tokens - tokens_used)

    def _refusal(self, wait: float, tokens: int, fleet: bool) -> RateLimitExceededError:
        if fleet:
            self.refused_fleet += 1
        else:
            self.refused_local += 1
        scope = "the fleet's" if fleet else "this process's"
        if wait < 0:
            limit = "tokens_per_minute"
            message = (
                f"model {self.key!r}: a call that may use {tokens:,} tokens (prompt + "
                f"max_tokens) can never fit its rate_limit of {self._caps[1]:,} "
                "tokens_per_minute; raise the limit or lower max_tokens"
            )
            return RateLimitExceededError(
                message, model_id=self.key, retry_after_s=None, limit=limit, fleet=fleet
            )
        limit = "requests_per_minute" if self._caps[0] else "tokens_per_minute"
        if self._caps[0] and self._caps[1]:
            limit = "requests_per_minute/tokens_per_minute"
        message = (
            f"model {self.key!r}: {scope} rate_limit ({self._describe()}) has no capacity "
            f"for {wait:.1f}s, longer than this call may wait; not sent"
        )
        return RateLimitExceededError(
            message, model_id=self.key, retry_after_s=wait, limit=limit, fleet=fleet
        )

    def _describe(self) -> str:
        parts = []
        if self._caps[0]:
            parts.append(f"{self._caps[0]:,} requests_per_minute")
        if self._caps[1]:
            parts.append(f"{self._caps[1]:,} tokens_per_minute")
        return ", ".join(parts)
