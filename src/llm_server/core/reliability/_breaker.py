"""The :class:`CircuitBreaker` class (private: public at :mod:`llm_server.core.circuit_breaker`)."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

from llm_server.core.clock import SYSTEM_CLOCK, Clock
from llm_server.core.errors import ConfigurationError
from llm_server.core.reliability._breaker_machine import UNTIMED, BreakerMachine
from llm_server.core.reliability._breaker_types import (
    BreakerListener,
    BreakerSnapshot,
    BreakerState,
    BreakerStateStore,
    FleetPolicy,
    InMemoryBreakerStore,
    is_transient_failure,
)
from llm_server.core.reliability._breaker_window import CountWindow, OutcomeWindow, TimeWindow

if TYPE_CHECKING:
    from llm_server.core.config import FrameworkSettings
    from llm_server.core.model_config import BreakerConfig

__all__ = ["DEFAULT_FAILURE_RATE", "DEFAULT_MINIMUM_CALLS", "CircuitBreaker"]

DEFAULT_FAILURE_RATE = 0.5
"""The failure rate that trips a breaker given no policy (resilience4j's default too)."""
DEFAULT_MINIMUM_CALLS = 20
"""Calls a count window must hold before a rate trips it. resilience4j waits for 100 (its
window size); 20 trips a breaker on a fresh window 5x sooner, while 5 % of transient faults
reach 10 failures in 20 calls with probability ~1e-8."""
_UNUSED_THRESHOLD = 5  # the consecutive count is not consulted under a rate policy
FLEET_COUNT_WINDOW_S = 10.0
"""With a shared store, a count window's failure rate is taken fleet-wide over this many
seconds (processes cannot share "the last N calls" without a round trip per call)."""

P = ParamSpec("P")
T = TypeVar("T")
ExcludeRule = type[BaseException] | Callable[[BaseException], bool]
_CLOSED = BreakerState.CLOSED

# permits taken by `async with breaker:` / `with breaker:`, per task (or thread)
_entered: ContextVar[tuple[tuple[CircuitBreaker, int, float], ...]] = ContextVar(
    "llm_server_breaker_permits", default=()
)


class CircuitBreaker(BreakerMachine):
    """Stops calling a failing dependency for a while, then probes it.

    Two trip policies. Given ``failure_threshold`` (and no ``failure_rate_threshold``), the
    breaker opens after that many consecutive failures: the classic
    ``CircuitBreaker(failure_threshold=5, reset_timeout=60)``. Otherwise it trips on the failure
    rate over a sliding window, by default 50 % of the last 100 calls once it holds at least 20
    (resilience4j's model and threshold): concurrent failures
    settling together cannot trip it while most calls succeed, and a full outage trips it
    after at most 100 calls (20 on a fresh window).

    Half-open, up to ``half_open_max_calls`` probes run at once. With the consecutive policy one
    failed probe re-opens the breaker and that many successful probes close it; with a rate
    policy the probes' verdicts are judged by the same rate, decided as soon as the outcome is
    certain (with 3 probes and 50 %: two failures re-open it, two successes close it). A probe
    that was cancelled (e.g. by a request deadline) or ended with an ignored error gives no
    verdict: its permit goes to the next call at once.

    An open breaker logs its transitions and, while it refuses, one summary line every 10 s
    (never a line per refused call).

    Args:
        failure_threshold: Consecutive failures that open the breaker (consecutive policy).
        reset_timeout: Seconds an open breaker refuses calls before letting probes through.
        name: Names the breaker in errors, events and the store (default: the decorated
            function's qualified name, else ``"circuit_breaker"``).
        half_open_max_calls: Probes admitted at once when half-open.
        failure_rate_threshold: Trip on the failure rate (0-1] over a sliding window (default
            0.5 unless ``failure_threshold`` is given).
        window_size: Calls (``window_type="count"``) or seconds (``"time"``) in the window.
        window_type: ``"count"`` or ``"time"``.
        minimum_calls: Calls the window must hold before a rate can trip the breaker
            (default: 20, at most ``window_size`` for count windows).
        slow_call_duration_s: When set, calls at least this long are slow.
        slow_call_rate_threshold: Slow-call rate (0-1] over the window that trips the breaker.
        is_failure: Which exceptions count as failures (default: :func:`is_transient_failure`);
            other exceptions count as neither failure nor success.
        exclude: Exception types or predicates that never count, even if ``is_failure`` says so.
        listeners: Receivers of state changes and call outcomes.
        clock: Time source (inject :class:`llm_server.testing.FakeClock` in tests).
        store: Where the state is kept (default: a private :class:`InMemoryBreakerStore`).
            A :class:`SharedBreakerStore` (Redis: :mod:`llm_server.fleet`) also counts
            failures and leases half-open probes fleet-wide; give the breaker a ``name``.
        probe_lease_s: With a shared store, how long a probe's permit lasts if its process
            never returns it (crashed, killed): at least the longest call should take.

    Raises:
        ConfigurationError: An option is out of range.
    """

    def __init__(
        self,
        *,
        failure_threshold: int | None = None,
        reset_timeout: float = 60.0,
        name: str | None = None,
        half_open_max_calls: int = 1,
        failure_rate_threshold: float | None = None,
        window_size: int = 100,
        window_type: Literal["count", "time"] = "count",
        minimum_calls: int | None = None,
        slow_call_duration_s: float | None = None,
        slow_call_rate_threshold: float = 1.0,
        is_failure: Callable[[BaseException], bool] = is_transient_failure,
        exclude: Iterable[ExcludeRule] = (),
        listeners: Iterable[BreakerListener] = (),
        clock: Clock | None = None,
        store: BreakerStateStore | None = None,
        probe_lease_s: float = 60.0,
    ) -> None:
        if failure_threshold is None:
            failure_threshold = _UNUSED_THRESHOLD
            if failure_rate_threshold is None:
                failure_rate_threshold = DEFAULT_FAILURE_RATE
        if minimum_calls is None:
            minimum_calls = DEFAULT_MINIMUM_CALLS
            if window_type == "count":
                minimum_calls = min(minimum_calls, window_size)
        _check(failure_threshold >= 1, "failure_threshold must be >= 1", failure_threshold)
        _check(_positive(reset_timeout), "reset_timeout must be a finite number > 0", reset_timeout)
        _check(half_open_max_calls >= 1, "half_open_max_calls must be >= 1", half_open_max_calls)
        _check(window_size >= 1, "window_size must be >= 1", window_size)
        _check(window_type in ("count", "time"), "window_type must be count or time", window_type)
        _check(minimum_calls >= 1, "minimum_calls must be >= 1", minimum_calls)
        _check(
            window_type == "time" or minimum_calls <= window_size,
            "minimum_calls must not exceed a count window's window_size",
            minimum_calls,
        )
        for label, rate in (
            ("failure_rate_threshold", failure_rate_threshold),
            ("slow_call_rate_threshold", slow_call_rate_threshold),
        ):
            _check(rate is None or 0 < rate <= 1, f"{label} must be in (0, 1]", rate)
        _check(
            slow_call_duration_s is None or _positive(slow_call_duration_s),
            "slow_call_duration_s must be a finite number > 0",
            slow_call_duration_s,
        )
        self._name = name
        rules = tuple(exclude)
        window: OutcomeWindow | None = None
        if failure_rate_threshold is not None or slow_call_duration_s is not None:
            window = CountWindow(window_size) if window_type == "count" else TimeWindow(window_size)
        super().__init__(
            key=name or "circuit_breaker",
            failure_threshold=failure_threshold,
            reset_timeout=float(reset_timeout),
            half_open_max_calls=half_open_max_calls,
            failure_rate_threshold=failure_rate_threshold,
            minimum_calls=minimum_calls,
            slow_call_duration_s=slow_call_duration_s,
            slow_call_rate_threshold=slow_call_rate_threshold,
            window=window,
            is_failure=is_failure,
            exclude_types=tuple(r for r in rules if isinstance(r, type)),
            exclude_predicates=tuple(r for r in rules if not isinstance(r, type)),
            listeners=tuple(listeners),
            clock=clock or SYSTEM_CLOCK,
            store=store or InMemoryBreakerStore(),
        )
        self._join_fleet(
            FleetPolicy(
                failure_threshold=failure_threshold if failure_rate_threshold is None else None,
                failure_rate=failure_rate_threshold,
                minimum_calls=minimum_calls,
                window_s=float(window_size) if window_type == "time" else FLEET_COUNT_WINDOW_S,
                reset_timeout_s=float(reset_timeout),
                half_open_max_calls=half_open_max_calls,
                probe_lease_s=probe_lease_s,
                monotonic=self._now,
            )
        )

    @classmethod
    def from_config(
        cls,
        name: str,
        settings: FrameworkSettings,
        config: BreakerConfig | None = None,
        *,
        listeners: Iterable[BreakerListener] = (),
        clock: Clock | None = None,
        store: BreakerStateStore | None = None,
        probe_lease_s: float = 60.0,
    ) -> CircuitBreaker:
        """Build a model's breaker from the settings' defaults and its YAML overrides.

        Args:
            name: The breaker's name (the model id).
            settings: Supplies ``breaker_*`` defaults.
            config: The model's ``circuit_breaker:`` block, if any.
            listeners: Receivers of the breaker's events.
            clock: Time source.
            store: State store.
            probe_lease_s: With a shared store, the lifetime of a probe's permit.
        """
        c = config
        options: dict[str, Any] = {
            "reset_timeout": settings.breaker_reset_timeout_s,
            "half_open_max_calls": settings.breaker_half_open_max_calls,
            "window_size": settings.breaker_window_size,
            "minimum_calls": settings.breaker_minimum_calls,
        }
        # The policy: a rate unless a consecutive threshold is what the YAML (or, without a
        # YAML policy, the settings) asks for.
        yaml_rate = c.failure_rate_threshold if c is not None else None
        yaml_threshold = c.failure_threshold if c is not None else None
        if yaml_rate is None and yaml_threshold is None:
            if settings.breaker_failure_threshold is not None:
                options["failure_threshold"] = settings.breaker_failure_threshold
            else:
                options["failure_rate_threshold"] = settings.breaker_failure_rate_threshold
        if c is not None:
            overrides = {
                "failure_threshold": c.failure_threshold,
                "reset_timeout": c.reset_timeout_s,
                "half_open_max_calls": c.half_open_max_calls,
                "failure_rate_threshold": c.failure_rate_threshold,
                "window_size": c.window_size,
                "window_type": c.window_type,
                "minimum_calls": c.minimum_calls,
                "slow_call_duration_s": c.slow_call_duration_s,
                "slow_call_rate_threshold": c.slow_call_rate_threshold,
            }
            options.update({k: v for k, v in overrides.items() if v is not None})
        if options.get("window_type", "count") == "count" and (
            c is None or c.minimum_calls is None
        ):
            # the settings' minimum fits the window (a minimum the YAML gives is checked)
            options["minimum_calls"] = min(options["minimum_calls"], options["window_size"])
        try:
            return cls(
                name=name,
                listeners=listeners,
                clock=clock,
                store=store,
                probe_lease_s=probe_lease_s,
                **options,
            )
        except ConfigurationError as exc:
            detail = exc.message.removeprefix("circuit breaker: ")
            raise ConfigurationError(f"model {name!r}: circuit_breaker: {detail}") from None

    # --- introspection -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The breaker's name."""
        return self._key

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose timeout passed reads as half-open)."""
        return self._current_record(self._now()).state

    @property
    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets the next probe through (0 when not open)."""
        now = self._now()
        return self._retry_after(self._current_record(now), now)

    def snapshot(self) -> BreakerSnapshot:
        """A consistent view of the state and counters, for metrics and health checks."""
        now = self._now()
        record = self._current_record(now)
        with self._lock:
            self._sync_locked(record)
            window = self._window
            if window is not None:
                window.refresh(now)
            return BreakerSnapshot(
                name=self.name,
                state=record.state,
                retry_after_s=self._retry_after(record, now),
                consecutive_failures=self._consecutive,
                window_calls=window.calls if window else 0,
                window_failures=window.failures if window else 0,
                window_slow_calls=window.slow if window else 0,
                half_open_in_flight=self._probes_in_flight,
                successes=self._successes,
                failures=self._failures,
                ignored=self._ignored,
                refused=self._refused,
                opened_because=None if record.state is _CLOSED else self._opened_because,
                forced=record.forced,
            )

    def add_listener(self, listener: BreakerListener) -> None:
        """Add a receiver of this breaker's events."""
        self._listeners = (*self._listeners, listener)
        self._timed = self._needs_timing()

    # --- manual control ----------------------------------------------------------------------

    def force_open(
        self, *, ttl_s: float | None = None, by: str | None = None, reason: str | None = None
    ) -> None:
        """Refuse every call until :meth:`reset`, or until ``ttl_s`` passed.

        With a shared store the whole fleet refuses; who, why and until when are recorded
        (:attr:`BreakerSnapshot.forced`, shown on ``/models``).

        Args:
            ttl_s: Seconds after which the breaker closes by itself (``None``: never).
            by: Who forces it (a user, a runbook).
            reason: Why.
        """
        _check(ttl_s is None or _positive(ttl_s), "ttl_s must be a finite number > 0", ttl_s)
        self._force_state(BreakerState.FORCED_OPEN, ttl_s=ttl_s, by=by, reason=reason)

    def disable(
        self, *, ttl_s: float | None = None, by: str | None = None, reason: str | None = None
    ) -> None:
        """Let every call through and count nothing until :meth:`reset` (or ``ttl_s``).

        Args:
            ttl_s: Seconds after which the breaker closes by itself (``None``: never).
            by: Who disables it.
            reason: Why.
        """
        _check(ttl_s is None or _positive(ttl_s), "ttl_s must be a finite number > 0", ttl_s)
        self._force_state(BreakerState.DISABLED, ttl_s=ttl_s, by=by, reason=reason)

    def reset(self) -> None:
        """Close the breaker and forget all counts of the current period."""
        self._force_state(BreakerState.CLOSED)

    # --- guarding calls ----------------------------------------------------------------------

    def admit(self) -> tuple[int, float]:
        """Admit one call, or refuse it; the caller must then :meth:`settle` it exactly once.

        For wrappers that guard a call without a closure or an extra coroutine frame
        (``call()`` is ``admit()``, the call, ``settle()``).

        Returns:
            The call's ticket: its permit and its start time.

        Raises:
            CircuitOpenError: The breaker refused the call.
        """
        start = self._now() if self._timed else UNTIMED
        record = self._get(self._key)  # the closed-state fast path of _acquire(), inlined
        if record.state is _CLOSED and record.generation == self._seen_generation:
            return record.generation << 1, start
        return self._acquire_slow(), start

    def settle(self, ticket: tuple[int, float], error: BaseException | None) -> None:
        """Record the outcome of a call admitted by :meth:`admit` (``None``: it succeeded)."""
        self._release(ticket[0], error, ticket[1])

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker.

        Raises:
            CircuitOpenError: The breaker refused the call (``fn`` was not called).
        """
        permit, start = self.admit()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._release(permit, exc, start)
            raise
        self._release(permit, None, start)
        return result

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a synchronous ``fn(*args, **kwargs)`` through the breaker (thread-safe).

        Raises:
            CircuitOpenError: The breaker refused the call (``fn`` was not called).
        """
        permit, start = self.admit()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._release(permit, exc, start)
            raise
        self._release(permit, None, start)
        return result

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate an async or sync function so every call goes through the breaker.

        The decorated function's ``breaker`` attribute is this breaker, to read, reset or
        force it (``call_provider.breaker.snapshot()``).
        """
        if self._name is None:
            self._name = self._key = getattr(fn, "__qualname__", self._key)
        if inspect.iscoroutinefunction(fn):
            async_fn = cast("Callable[P, Awaitable[Any]]", fn)

            @functools.wraps(fn)
            async def guarded_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call(async_fn, *args, **kwargs)

            guarded_async.breaker = self  # type: ignore[attr-defined]
            return cast("Callable[P, T]", guarded_async)

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.call_sync(fn, *args, **kwargs)

        guarded.breaker = self  # type: ignore[attr-defined]
        return guarded

    async def __aenter__(self) -> CircuitBreaker:
        self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    def __enter__(self) -> CircuitBreaker:
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self.state.value!r})"

    def _enter(self) -> None:
        permit, start = self.admit()
        _entered.set((*_entered.get(), (self, permit, start)))

    def _exit(self, exc: BaseException | None) -> None:
        entries = _entered.get()
        for index in range(len(entries) - 1, -1, -1):
            if entries[index][0] is self:
                _, permit, start = entries[index]
                _entered.set(entries[:index] + entries[index + 1 :])
                self._release(permit, exc, start)
                return


def _positive(seconds: float) -> bool:
    """A finite number of seconds above zero (an infinite one cannot be stored in a fleet's
    Redis, which counts milliseconds, and ``None`` already says "never")."""
    return math.isfinite(seconds) and seconds > 0


def _check(ok: bool, message: str, value: object) -> None:
    if not ok:
        raise ConfigurationError(f"circuit breaker: {message} (got {value!r})")
