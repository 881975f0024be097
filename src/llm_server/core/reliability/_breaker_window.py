"""Sliding windows of call outcomes for rate-based breaker policies.

Both windows keep running totals, so recording a call is O(1) (amortised for the time
window) and reading the rates never scans the window.
"""

from __future__ import annotations

import math
from typing import Protocol

__all__ = ["CountWindow", "OutcomeWindow", "TimeWindow"]

_FAILED = 1
_SLOW = 2
_RECORDED = 4


class OutcomeWindow(Protocol):
    """Outcomes of recent calls, with running totals."""

    calls: int
    failures: int
    slow: int

    def record(self, now: float, *, failed: bool, slow: bool) -> None:
        """Add one call's outcome at clock time ``now``."""
        ...

    def refresh(self, now: float) -> None:
        """Drop outcomes that left the window by ``now``."""
        ...

    def clear(self) -> None:
        """Forget everything."""
        ...


class CountWindow:
    """The last ``size`` calls, in a ring buffer."""

    __slots__ = ("_index", "_ring", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._ring = [0] * size
        self._index = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def record(self, now: float, *, failed: bool, slow: bool) -> None:
        """Add one outcome, overwriting the oldest once the ring is full."""
        old = self._ring[self._index]
        if old:
            self.calls -= 1
            self.failures -= old & _FAILED
            self.slow -= (old & _SLOW) >> 1
        self._ring[self._index] = _RECORDED | (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self._index = (self._index + 1) % len(self._ring)
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def refresh(self, now: float) -> None:
        """Nothing ages out of a count window."""

    def clear(self) -> None:
        """Forget everything."""
        self._ring = [0] * len(self._ring)
        self._index = 0
        self.calls = self.failures = self.slow = 0


class TimeWindow:
    """Calls of the last ``seconds`` seconds, in one-second buckets."""

    __slots__ = ("_buckets", "_head", "calls", "failures", "slow")

    def __init__(self, seconds: int) -> None:
        # each bucket: [calls, failures, slow] for one whole second of clock time
        self._buckets = [[0, 0, 0] for _ in range(seconds)]
        self._head = -math.inf  # the newest second the buckets describe
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def refresh(self, now: float) -> None:
        """Empty the buckets of seconds that left the window by ``now``."""
        second = math.floor(now)
        if second <= self._head:
            return
        size = len(self._buckets)
        stale = size if self._head == -math.inf else min(size, int(second - self._head))
        for offset in range(stale):
            bucket = self._buckets[(second - offset) % size]
            self.calls -= bucket[0]
            self.failures -= bucket[1]
            self.slow -= bucket[2]
            bucket[0] = bucket[1] = bucket[2] = 0
        self._head = second

    def record(self, now: float, *, failed: bool, slow: bool) -> None:
        """Add one outcome to the bucket of ``now``'s second."""
        self.refresh(now)
        bucket = self._buckets[math.floor(now) % len(self._buckets)]
        bucket[0] += 1
        bucket[1] += failed
        bucket[2] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def clear(self) -> None:
        """Forget everything."""
        for bucket in self._buckets:
            bucket[0] = bucket[1] = bucket[2] = 0
        self._head = -math.inf
        self.calls = self.failures = self.slow = 0
