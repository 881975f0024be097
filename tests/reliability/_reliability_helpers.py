"""Helpers shared by the reliability tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from llm_server.core.circuit_breaker import (
    BreakerListener,
    BreakerState,
    CallOutcome,
    CircuitBreaker,
)
from llm_server.core.errors import ProviderUnavailableError


@dataclass
class RecordingListener(BreakerListener):
    """Records every breaker event."""

    transitions: list[tuple[BreakerState, BreakerState]] = field(default_factory=list)
    calls: list[CallOutcome] = field(default_factory=list)

    def on_state_change(
        self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState
    ) -> None:
        self.transitions.append((old, new))

    def on_call(self, breaker: CircuitBreaker, outcome: CallOutcome, duration_s: float) -> None:
        self.calls.append(outcome)


async def succeed() -> str:
    """A guarded call that works."""
    return "ok"


async def fail_500() -> str:
    """A guarded call that fails like a provider 5xx."""
    raise ProviderUnavailableError("provider answered 500", model_id="m")


async def record_failures(breaker: CircuitBreaker, count: int) -> None:
    """Make ``count`` failing calls through ``breaker``."""
    for _ in range(count):
        with pytest.raises(ProviderUnavailableError):
            await breaker.call(fail_500)


class Flaky:
    """An async call that fails with the given errors, in order, then answers ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"
