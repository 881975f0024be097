"""FakeClock: monotonic time that only moves when told to."""

from __future__ import annotations

import asyncio

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`~llm_server.core.clock.Clock` for tests.

    Time starts at ``start`` and moves only through :meth:`advance` or :meth:`sleep`, which
    advances time at once instead of waiting. Pass it as ``clock=`` to circuit breakers,
    retrying and deadline wrappers so breaker timeouts and backoffs cost no real time::

        clock = FakeClock()
        breaker = CircuitBreaker(failure_threshold=1, reset_timeout=60, clock=clock)
        ...
        clock.advance(60)  # the breaker now lets a probe through

    Attributes:
        sleeps: Every duration passed to :meth:`sleep`, in order (handy to assert backoffs).
    """

    __slots__ = ("_now", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The current fake time in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (negative values are ignored: time never goes back).

        Args:
            seconds: How far to move.
        """
        if seconds > 0:
            self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record ``seconds``, advance time by it and yield once to the event loop.

        Yielding keeps the scheduling of real code: other tasks run while one "sleeps".
        """
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"
