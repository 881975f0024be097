"""Values, protocols and the default failure predicate of the circuit breaker.

Public names here are re-exported from :mod:`llm_server.core.reliability._breaker`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from llm_server.core.errors import ModelCallError

if TYPE_CHECKING:
    from llm_server.core.reliability._breaker import CircuitBreaker

__all__ = [
    "BreakerListener",
    "BreakerRecord",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerStateStore",
    "CallOutcome",
    "FleetPolicy",
    "InMemoryBreakerStore",
    "SharedBreakerStore",
    "is_transient_failure",
]


class BreakerState(StrEnum):
    """The state of a circuit breaker."""

    CLOSED = "closed"
    """Calls pass; outcomes are counted."""
    OPEN = "open"
    """Calls are refused until the reset timeout has passed."""
    HALF_OPEN = "half_open"
    """A limited number of probe calls pass; their outcome closes or re-opens the breaker."""
    FORCED_OPEN = "forced_open"
    """Opened by hand with ``force_open()``: every call is refused until ``reset()``."""
    DISABLED = "disabled"
    """Switched off with ``disable()``: every call passes and nothing is counted."""


class CallOutcome(StrEnum):
    """How the breaker judged one call."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"
    """An exception that counts as neither failure nor success (bad request, cancellation...)."""
    REFUSED = "refused"
    """The breaker refused the call; it never ran."""


@runtime_checkable
class BreakerListener(Protocol):
    """Receives a breaker's events (for logs, metrics and span events).

    Subclass it to inherit no-op methods and override only what you need. Exceptions raised
    by a listener are logged and swallowed: a listener can never break a call.
    """

    def on_state_change(
        self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState
    ) -> None:
        """Called after the breaker moved from ``old`` to ``new``."""

    def on_call(self, breaker: CircuitBreaker, outcome: CallOutcome, duration_s: float) -> None:
        """Called after every call (``REFUSED`` calls have a duration of 0)."""


@dataclass(frozen=True, slots=True)
class ForcedState:
    """Who forced a breaker open (or disabled it), when, why, and for how long.

    Attributes:
        by: Who did it (a user, a runbook, a script).
        reason: Why.
        at: Unix time it was done.
        ttl_s: Seconds it lasts before the breaker closes by itself (``None``: until
            :meth:`~llm_server.core.circuit_breaker.CircuitBreaker.reset`).
    """

    by: str
    reason: str
    at: float
    ttl_s: float | None = None

    @property
    def until(self) -> float | None:
        """Unix time the forced state ends by itself (``None``: never)."""
        return None if self.ttl_s is None else self.at + self.ttl_s


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """The part of a breaker's state kept in a :class:`BreakerStateStore`.

    Attributes:
        state: The current state.
        retry_at: Clock time from which an open breaker lets probes through; for a forced
            state with a TTL, the clock time it ends (``0``: never).
        generation: Incremented on every transition; outcomes of calls started in an
            earlier generation are not counted.
        forced: Who forced the state, why and for how long (forced states only).
    """

    state: BreakerState = BreakerState.CLOSED
    retry_at: float = 0.0
    generation: int = 0
    forced: ForcedState | None = None


@runtime_checkable
class BreakerStateStore(Protocol):
    """Where breakers keep their state (in memory by default).

    Only transitions go through :meth:`compare_and_set`, so the store is written rarely and
    read once per call. A store shared between processes (e.g. Redis) implements these two
    methods atomically; it must translate ``retry_at`` between each process's monotonic clock
    and wall time. The counters that decide when to trip stay in each process.
    """

    def get(self, name: str) -> BreakerRecord:
        """The breaker's record (a closed record when none was stored yet)."""
        ...

    def compare_and_set(self, name: str, expected: BreakerRecord, new: BreakerRecord) -> bool:
        """Store ``new`` if the stored record still equals ``expected``; return whether it did."""
        ...


@dataclass(frozen=True, slots=True)
class FleetPolicy:
    """What a shared store needs to decide for a breaker across processes.

    Attributes:
        failure_threshold: Failures since the fleet's last success that trip it (consecutive
            policy; ``None`` under a rate policy).
        failure_rate: Fleet failure rate that trips it (``None``: consecutive policy).
        minimum_calls: Fleet calls in the window before a rate can trip it.
        window_s: The time the fleet's failure rate is taken over.
        reset_timeout_s: How long it stays open.
        half_open_max_calls: Probes at once, fleet-wide.
        probe_lease_s: How long a probe's permit lasts if its process never returns it.
        monotonic: The breaker's clock (an injected one in tests): a store turns the time
            left of an open (or forced) state into a ``retry_at`` on this clock.
    """

    failure_threshold: int | None
    failure_rate: float | None
    minimum_calls: int
    window_s: float
    reset_timeout_s: float
    half_open_max_calls: int
    probe_lease_s: float
    monotonic: Callable[[], float] = time.monotonic


@runtime_checkable
class SharedBreakerStore(BreakerStateStore, Protocol):
    """A :class:`BreakerStateStore` shared by processes, which also decides fleet-wide.

    :meth:`get` must answer from a local copy (no I/O: it is read on every call). The other
    methods may do I/O. Each returns ``None`` when the store cannot decide now (e.g. Redis is
    down): the breaker then decides alone, from its own counts, as a per-process one would.
    """

    def register(
        self,
        name: str,
        policy: FleetPolicy,
        on_change: Callable[[BreakerRecord, BreakerRecord], None],
    ) -> None:
        """Declare a breaker; ``on_change(old, new)`` is called when another process moved it."""
        ...

    def deciding(self) -> bool:
        """Whether the store decides now (``False`` while it cannot be reached): while it
        does, a breaker's own counts never trip it or judge its probes; the fleet's do."""
        ...

    def report(
        self, name: str, generation: int, *, failed: bool, consecutive: int
    ) -> BreakerRecord | None:
        """Count a closed-state outcome fleet-wide (failures at once, successes in batches).

        Args:
            name: The breaker.
            generation: The generation the call ran in.
            failed: Whether it failed.
            consecutive: This process's failures since its own last success.

        Returns:
            The record after a failure was counted (open if the fleet tripped), else ``None``.
        """
        ...

    def lease_probe(self, name: str, generation: int) -> bool | None:
        """Take one of the fleet's half-open probe permits (a lease that expires)."""
        ...

    def probe_done(self, name: str, generation: int, outcome: CallOutcome) -> BreakerRecord | None:
        """Return a probe's lease with its verdict; the record after the fleet judged it."""
        ...


class InMemoryBreakerStore:
    """The default :class:`BreakerStateStore`: a dict guarded by a lock, one per process."""

    __slots__ = ("_lock", "_records")

    _CLOSED = BreakerRecord()

    def __init__(self) -> None:
        self._records: dict[str, BreakerRecord] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> BreakerRecord:
        """Return the stored record, or a closed one."""
        return self._records.get(name, self._CLOSED)

    def compare_and_set(self, name: str, expected: BreakerRecord, new: BreakerRecord) -> bool:
        """Atomically replace ``expected`` with ``new``."""
        with self._lock:
            if self._records.get(name, self._CLOSED) != expected:
                return False
            self._records[name] = new
            return True


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent view of a breaker for metrics and health endpoints.

    Attributes:
        name: The breaker's name.
        state: Its state.
        retry_after_s: Seconds until an open breaker lets the next probe through (else 0).
        consecutive_failures: Failures since the last success (consecutive policy).
        window_calls: Calls in the sliding window (rate policies; 0 without a window).
        window_failures: Failures in the sliding window.
        window_slow_calls: Slow calls in the sliding window.
        half_open_in_flight: Probes running now.
        successes: Successful calls since the breaker was made.
        failures: Failed calls since the breaker was made.
        ignored: Calls that ended with an ignored exception.
        refused: Calls the breaker refused.
        opened_because: Why the breaker is open or half-open (``"5 consecutive failures"``,
            ``"12 of 20 calls failed (60%)"``, ``"forced open"``); ``None`` while closed. The
            counters above restart with each state, so this keeps what tripped it.
        forced: Who forced the state, when, why and until when (forced states only).
    """

    name: str
    state: BreakerState
    retry_after_s: float
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    half_open_in_flight: int
    successes: int
    failures: int
    ignored: int
    refused: int
    opened_because: str | None = None
    forced: ForcedState | None = None

    @property
    def failure_rate(self) -> float:
        """Failures / calls in the window (0 when it is empty)."""
        return self.window_failures / self.window_calls if self.window_calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        """Slow calls / calls in the window (0 when it is empty)."""
        return self.window_slow_calls / self.window_calls if self.window_calls else 0.0


def is_transient_failure(exc: BaseException) -> bool:
    """The default failure predicate: errors that say the provider is unhealthy.

    Counts retryable :class:`~llm_server.core.errors.ModelCallError` subclasses (provider
    unavailable / 5xx, model timeouts, rate limits) and ``TimeoutError``, ``ConnectionError``
    and other ``OSError``. Everything else (bad requests, auth errors, context-window errors,
    unparseable output, bad input, cancellation) counts as neither failure nor success.
    """
    if isinstance(exc, ModelCallError):
        return exc.retryable
    return isinstance(exc, OSError | TimeoutError)
