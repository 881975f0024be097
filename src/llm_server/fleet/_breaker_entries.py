"""What a shared breaker is in Redis: its keys and queued work per process (:class:`Entry`),
the arguments of its scripts, and who forced a state as ``BREAKER_READ`` answers it.

The scripts are in :mod:`._scripts`; :class:`~._breakers.RedisBreakerStore` decides when each
runs. Open periods are the policy's, a forced state's the TTL it was given (never a difference
of two clocks: the breaker's may be an injected one); Redis's clock says when they end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_server.core.reliability._breaker_types import (
    BreakerRecord,
    BreakerState,
    CallOutcome,
    FleetPolicy,
    ForcedState,
)

__all__ = [
    "FORCED",
    "READ_STRIDE",
    "STATES",
    "Entry",
    "Verdict",
    "cas_args",
    "forced_state",
    "lease_args",
    "outcome_args",
    "text",
    "verdict_args",
]

STATES = {state.value: state for state in BreakerState}
FORCED = (BreakerState.FORCED_OPEN, BreakerState.DISABLED)
READ_STRIDE = 8  # BREAKER_READ's values per breaker


def text(value: Any) -> str:
    """A reply's value as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def forced_state(state: str, values: Any) -> ForcedState | None:
    """Who forced a state, from BREAKER_READ's last four values (``None``: not forced)."""
    if STATES.get(state) not in FORCED:
        return None
    by, reason, at_ms, ttl_ms = (text(v) for v in values)
    ttl = int(ttl_ms or 0)
    return ForcedState(
        by=by or "unknown",
        reason=reason,
        at=int(at_ms or 0) / 1000,
        ttl_s=ttl / 1000 if ttl > 0 else None,
    )


@dataclass(slots=True)
class Verdict:
    """A probe's verdict waiting to be written, with the lease it returns."""

    generation: int
    lease: str
    outcome: CallOutcome
    until: float  # local monotonic time the lease expires (Redis then dropped it anyway)


@dataclass(slots=True)
class Entry:
    """One breaker of this process: its policy, keys, and what waits to be written."""

    policy: FleetPolicy
    on_change: Callable[[BreakerRecord, BreakerRecord], None]
    keys: tuple[str, str, str]  # hash, window, probes
    successes: int = 0  # closed-state successes not yet written
    generation: int = 0  # ... in this generation
    # failures counted on an event loop, for the writer thread
    failures: int = 0
    failure_calls: int = 0  # (successes before them included)
    failure_generation: int = 0
    consecutive: int = -1  # -1: no success of this process among them
    transitions: list[tuple[BreakerRecord, BreakerRecord]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    lease_wanted: int | None = None  # a generation the writer should ask a lease for
    lease_ready: tuple[int, str, float] | None = None  # generation, lease id, expiry
    denied: tuple[int, float] | None = None  # generation, refused until (monotonic)


def cas_args(
    entry: Entry, expected: BreakerRecord, new: BreakerRecord, channel: str, name: str
) -> list[Any]:
    """``BREAKER_CAS``'s arguments: move ``expected`` to ``new`` and announce it."""
    open_ms = 0
    if new.state is BreakerState.OPEN:
        open_ms = math.ceil(entry.policy.reset_timeout_s * 1000)
    by = new.forced
    if by is not None and by.ttl_s:
        open_ms = math.ceil(by.ttl_s * 1000)
    return [
        expected.state.value,
        expected.generation,
        new.state.value,
        new.generation,
        open_ms,
        channel,
        name,
        by.by if by else "",
        by.reason if by else "",
        round(by.at * 1000) if by else 0,
    ]


def verdict_args(entry: Entry, verdict: Verdict, channel: str, name: str) -> list[Any]:
    """``BREAKER_PROBE``'s arguments for a verdict (``done``)."""
    policy = entry.policy
    return [
        "done",
        verdict.generation,
        verdict.lease,
        verdict.outcome.value,
        policy.half_open_max_calls,
        policy.failure_rate or 0,
        math.ceil(policy.reset_timeout_s * 1000),
        channel,
        name,
    ]


def lease_args(entry: Entry, generation: int, lease: str) -> list[Any]:
    """``BREAKER_PROBE``'s arguments for a lease request (``lease``)."""
    policy = entry.policy
    return [
        "lease",
        generation,
        lease,
        policy.half_open_max_calls,
        math.ceil(policy.probe_lease_s * 1000),
    ]


def outcome_args(
    entry: Entry,
    generation: int,
    *,
    calls: int,
    failures: int,
    consecutive: int,
    channel: str,
    name: str,
) -> list[Any]:
    """``BREAKER_OUTCOMES``'s arguments: calls and failures of a generation, and the policy."""
    policy = entry.policy
    width = max(1, math.ceil(policy.window_s / 60))
    return [
        generation,
        calls,
        failures,
        consecutive,
        (policy.failure_threshold or 0) if policy.failure_rate is None else 0,
        policy.failure_rate or 0,
        policy.minimum_calls,
        width,
        math.ceil(policy.window_s / width),
        math.ceil(policy.reset_timeout_s * 1000),
        channel,
        name,
    ]
