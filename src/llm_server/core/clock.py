"""An injectable clock: monotonic time plus an async sleep.

Circuit breakers, retries and deadlines read time and wait only through a :class:`Clock`, so
tests can pass :class:`llm_server.testing.FakeClock` and run in microseconds without ever
really sleeping. Production code uses :data:`SYSTEM_CLOCK` (``time.monotonic`` and
``asyncio.sleep``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time in seconds and a way to wait."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (the epoch is arbitrary)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a fake clock advances its time instead)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait with ``asyncio.sleep``."""
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()
"""The shared real clock, the default everywhere a clock is accepted."""
