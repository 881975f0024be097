"""The circuit breaker's state machine: permits, outcomes and transitions (private).

:class:`~llm_server.core.circuit_breaker.CircuitBreaker` adds the public API on top.

A call takes a *permit* before it runs and returns it with its outcome afterwards, each in a
short synchronous critical section; nothing is locked while the call runs. A permit is an
int: ``generation << 1 | is_probe`` (``-1`` when the breaker is disabled). The generation
is that of the stored :class:`BreakerRecord`, bumped by every transition, so the outcome of a
call that started in an earlier state is never counted against the current one.

The closed-state hot path reads the record without the lock and, for the consecutive policy,
needs no clock reading and no allocation; the lock (a ``threading.Lock``, since sync functions
may be guarded from worker threads) is only held to update counters.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from llm_server.core.clock import Clock, SystemClock
from llm_server.core.errors import CircuitOpenError
from llm_server.core.reliability._breaker_types import (
    BreakerListener,
    BreakerRecord,
    BreakerState,
    BreakerStateStore,
    CallOutcome,
    FleetPolicy,
    ForcedState,
    SharedBreakerStore,
)
from llm_server.core.reliability._breaker_window import OutcomeWindow, TimeWindow

_log = logging.getLogger("llm_server.core.reliability._breaker")

# module constants: cheaper to reach than enum class attributes in the hot path
_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN
_FORCED_OPEN = BreakerState.FORCED_OPEN
_DISABLED = BreakerState.DISABLED
_SUCCESS = CallOutcome.SUCCESS
_FAILURE = CallOutcome.FAILURE
_IGNORED = CallOutcome.IGNORED
_REFUSED = CallOutcome.REFUSED

DISABLED_PERMIT = -1
REFUSAL_LOG_INTERVAL_S = 10.0  # an open breaker logs one summary of its refusals this often
UNTIMED = math.nan  # the start time of a call made while no component needs durations
Transition = tuple[BreakerState, BreakerState]


class BreakerMachine:
    """Counters and transitions of one breaker; see the module docstring."""

    def __init__(
        self,
        *,
        key: str,
        failure_threshold: int,
        reset_timeout: float,
        half_open_max_calls: int,
        failure_rate_threshold: float | None,
        minimum_calls: int,
        slow_call_duration_s: float | None,
        slow_call_rate_threshold: float,
        window: OutcomeWindow | None,
        is_failure: Callable[[BaseException], bool],
        exclude_types: tuple[type[BaseException], ...],
        exclude_predicates: tuple[Callable[[BaseException], bool], ...],
        listeners: tuple[BreakerListener, ...],
        clock: Clock,
        store: BreakerStateStore,
    ) -> None:
        self._key = key
        self._failure_threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._half_open_max_calls = half_open_max_calls
        self._failure_rate = failure_rate_threshold
        self._minimum_calls = minimum_calls
        self._slow_s = slow_call_duration_s
        self._slow_rate = slow_call_rate_threshold
        self._window = window
        self._is_failure = is_failure
        self._exclude_types = exclude_types
        self._exclude_predicates = exclude_predicates
        self._listeners = listeners
        self._clock = clock
        # the real clock is read through the builtin directly: one call instead of two
        self._now: Callable[[], float] = (
            time.monotonic if isinstance(clock, SystemClock) else clock.monotonic
        )
        self._store = store
        self._get = store.get
        self._lock = threading.Lock()
        self._timed = self._needs_timing()
        self._seen_generation = store.get(key).generation
        self._consecutive = 0
        self._probes_in_flight = 0
        self._probe_successes = self._probe_failures = 0
        self._successes = self._failures = self._ignored = self._refused = 0
        self._opened_because: str | None = None
        self._refused_unlogged = 0  # refusals since the last summary line
        self._refusals_logged_at = -math.inf
        self._fleet: SharedBreakerStore | None = None
        self.last_change_by_fleet = False
        """Whether the latest transition was decided by the fleet (another process, or the
        fleet's counts) rather than by this process's own counts."""

    def _join_fleet(self, policy: FleetPolicy) -> None:
        """Share decisions through the store, when it is a :class:`SharedBreakerStore`."""
        if isinstance(self._store, SharedBreakerStore):
            self._fleet = self._store
            self._store.register(self._key, policy, self._fleet_changed)
            self._seen_generation = self._store.get(self._key).generation

    def _needs_timing(self) -> bool:
        # durations are only needed by listeners, slow-call checks and time windows
        return (
            bool(self._listeners)
            or self._slow_s is not None
            or isinstance(self._window, TimeWindow)
        )

    # --- permits -------------------------------------------------------------------------------

    def _acquire_slow(self) -> int:
        """Take a permit when the fast path (closed, generation seen) does not apply.

        The fast path is inlined where calls are guarded (``CircuitBreaker.call`` and co).
        """
        now = self._now()
        change: Transition | None = None
        refusal: CircuitOpenError | None = None
        lease = False
        with self._lock:
            record = self._get(self._key)
            self._sync_locked(record)
            due = self._due(record, now)
            if due is not None:
                record, change = self._move_when_due_locked(due)
            state = record.state
            if state is _CLOSED:
                permit = record.generation << 1
            elif state is _DISABLED:
                permit = DISABLED_PERMIT
            elif state is _HALF_OPEN and self._probes_in_flight < self._half_open_max_calls:
                self._probes_in_flight += 1  # held while the fleet is asked, given up if refused
                permit = record.generation << 1 | 1
                lease = self._fleet is not None
            else:
                refusal, summary = self._refusal_locked(record, now)
        if change is not None:
            self._notify_transition(change)
        if lease and not self._fleet_lease(record):
            with self._lock:
                if record.generation == self._seen_generation:
                    self._probes_in_flight -= 1
                refusal, summary = self._refusal_locked(record, now)
        if refusal is not None:
            self._refused_after(summary)
            raise refusal
        return permit

    def _fleet_lease(self, record: BreakerRecord) -> bool:
        """Ask the shared store for a probe lease (outside the lock: it may do I/O; ``None``
        from the store: it cannot say, the breaker decides alone)."""
        fleet = self._fleet
        assert fleet is not None
        leased = fleet.lease_probe(self._key, record.generation)
        return leased is None or leased

    def would_admit(self) -> bool:
        """Whether a call made now would be admitted (no permit is taken, nothing counted).

        Lets a caller refuse before doing any work for a call that the breaker would refuse
        anyway (see :meth:`refuse`). An open breaker whose timeout passed turns half-open here.
        """
        record = self._current_record(self._now())
        state = record.state
        if state is _CLOSED or state is _DISABLED:
            return True
        if state is _HALF_OPEN:
            # counters of an older generation are stale: the next acquire resets them
            stale = record.generation != self._seen_generation
            return stale or self._probes_in_flight < self._half_open_max_calls
        return False

    def refuse(self) -> CircuitOpenError:
        """Count a refusal decided before the call (after :meth:`would_admit` said no).

        Returns:
            The error to raise, as :meth:`admit` would have raised it.
        """
        now = self._now()
        with self._lock:
            record = self._get(self._key)
            self._sync_locked(record)
            refusal, summary = self._refusal_locked(record, now)
        self._refused_after(summary)
        return refusal

    def _refusal_locked(self, record: BreakerRecord, now: float) -> tuple[CircuitOpenError, str]:
        self._refused += 1
        self._refused_unlogged += 1
        retry_after = self._retry_after(record, now, refusing=True)
        summary = ""
        if now - self._refusals_logged_at >= REFUSAL_LOG_INTERVAL_S:
            summary = (
                f"circuit breaker {self._key!r} ({record.state.value}) refused "
                f"{self._refused_unlogged} call(s) since its last summary; "
                f"next probe in {retry_after:.1f}s"
            )
            self._refused_unlogged = 0
            self._refusals_logged_at = now
        return CircuitOpenError(self._key, retry_after), summary

    def _refused_after(self, summary: str) -> None:
        if summary:
            _log.warning("%s", summary)
        if self._listeners:
            self._notify_call(_REFUSED, 0.0)

    def _release(self, permit: int, exc: BaseException | None, start: float) -> None:
        if permit < 0:
            return  # disabled: record nothing
        now = self._now() if self._timed else 0.0
        # a call that started untimed (before a listener was added) reports a duration of 0
        duration = 0.0 if start is UNTIMED else now - start
        outcome = _SUCCESS if exc is None else self._classify(exc)
        change: Transition | None = None
        with self._lock:
            # no store read here: every transition of ours updates _seen_generation, and a
            # transition by another breaker sharing the store is noticed before we act on it
            if outcome is _SUCCESS:
                self._successes += 1
            elif outcome is _FAILURE:
                self._failures += 1
            else:
                self._ignored += 1
            if permit >> 1 == self._seen_generation:
                if permit & 1:
                    change = self._probe_done_locked(outcome)
                elif outcome is _SUCCESS and self._window is None:
                    self._consecutive = 0  # the hot path of the consecutive policy
                elif outcome is not _IGNORED:
                    change = self._closed_done_locked(outcome, duration, now)
            consecutive = self._consecutive
        if change is not None:
            self._notify_transition(change)
        if self._fleet is not None and (change is None or permit & 1):
            self._fleet_outcome(permit, outcome, consecutive)
        if self._listeners:
            self._notify_call(outcome, duration)

    def _fleet_outcome(self, permit: int, outcome: CallOutcome, consecutive: int) -> None:
        """Tell the shared store; adopt the fleet's decision if it made one."""
        fleet = self._fleet
        assert fleet is not None
        generation = permit >> 1
        if permit & 1:  # a probe always returns its lease, whatever the generation
            record = fleet.probe_done(self._key, generation, outcome)
        elif outcome is _IGNORED or generation != self._seen_generation:
            return
        else:
            record = fleet.report(
                self._key, generation, failed=outcome is _FAILURE, consecutive=consecutive
            )
        if record is not None and record.generation != self._seen_generation:
            old = BreakerRecord(state=_HALF_OPEN if permit & 1 else _CLOSED, generation=generation)
            self._fleet_changed(old, record)

    def _fleet_changed(self, old: BreakerRecord, new: BreakerRecord) -> None:
        """Adopt a record the fleet moved to (another process, or the fleet's counts)."""
        with self._lock:
            if new.generation != self._seen_generation or old.state is not new.state:
                self._seen_generation = new.generation - 1  # force a fresh start below
                self._sync_locked(new)
            if new.state is _CLOSED:
                self._opened_because = None
            elif new.state is _FORCED_OPEN:
                forced = new.forced
                self._opened_because = _forced_because(
                    forced.by if forced else None, forced.reason if forced else None
                )
            elif new.state is _OPEN and old.state is _CLOSED:
                self._opened_because = self._fleet_reason()
            elif new.state is _OPEN:
                self._opened_because = "half-open probes failed across the fleet"
        if old.state is not new.state:
            self._notify_transition((old.state, new.state), by_fleet=True)

    def _fleet_reason(self) -> str:
        if self._failure_rate is None:
            return f"{self._failure_threshold} consecutive failures across the fleet"
        return f"a failure rate of {self._failure_rate:.0%} or more across the fleet"

    # --- outcomes ------------------------------------------------------------------------------

    def _closed_done_locked(
        self, outcome: CallOutcome, duration: float, now: float
    ) -> Transition | None:
        failed = outcome is _FAILURE
        self._consecutive = self._consecutive + 1 if failed else 0
        reason = None
        if self._failure_rate is None and self._consecutive >= self._failure_threshold:
            reason = f"{self._consecutive} consecutive failures"
        window = self._window
        if window is not None:
            slow = self._slow_s is not None and duration >= self._slow_s
            window.record(now, failed=failed, slow=slow)
            if reason is None and window.calls >= self._minimum_calls:
                reason = self._window_trip(window)
        if reason is None or (self._fleet is not None and self._fleet.deciding()):
            return None  # (a shared store decides on the fleet's counts while it can)
        change = self._transition_locked(_OPEN)[1]
        if change is not None:
            self._opened_because = reason
        return change

    def _window_trip(self, window: OutcomeWindow) -> str | None:
        """Why the window's rates trip the breaker, or ``None`` when they do not."""
        calls, rate = window.calls, self._failure_rate
        if rate is not None and window.failures >= rate * calls:
            return f"{window.failures} of {calls} calls failed ({window.failures / calls:.0%})"
        if self._slow_s is not None and window.slow >= self._slow_rate * calls:
            return f"{window.slow} of {calls} calls were slow ({window.slow / calls:.0%})"
        return None

    def _probe_done_locked(self, outcome: CallOutcome) -> Transition | None:
        self._probes_in_flight -= 1
        if outcome is _IGNORED:
            return None  # no verdict (cancelled, cut by a deadline): the next call probes
        if self._fleet is not None and self._fleet.deciding():
            return None  # the fleet judges every process's probes together
        if outcome is _SUCCESS:
            self._probe_successes += 1
        else:
            self._probe_failures += 1
        rate, probes = self._failure_rate, self._half_open_max_calls
        if rate is None:  # consecutive policy: one failed probe re-opens, all must succeed
            reopen, close = self._probe_failures > 0, self._probe_successes >= probes
        else:  # judged by the rate over all the probes, decided as soon as it is certain
            pending = probes - self._probe_successes - self._probe_failures
            reopen = self._probe_failures >= rate * probes
            close = self._probe_failures + pending < rate * probes
        if reopen:
            reason = f"{self._probe_failures} of {probes} half-open probes failed"
            change = self._transition_locked(_OPEN)[1]  # (resets the probe counts)
            if change is not None:
                self._opened_because = reason
            return change
        if close:
            change = self._transition_locked(_CLOSED)[1]
            if change is not None:
                self._opened_because = None
            return change
        return None

    def _classify(self, exc: BaseException) -> CallOutcome:
        if not isinstance(exc, Exception) or isinstance(exc, self._exclude_types):
            return _IGNORED  # cancellation, KeyboardInterrupt, excluded types
        try:
            if any(predicate(exc) for predicate in self._exclude_predicates):
                return _IGNORED
            return _FAILURE if self._is_failure(exc) else _IGNORED
        except Exception:
            _log.exception("circuit breaker %r: failure predicate raised; call ignored", self._key)
            return _IGNORED

    # --- transitions ---------------------------------------------------------------------------

    def _transition_locked(self, state: BreakerState) -> tuple[BreakerRecord, Transition | None]:
        record = self._get(self._key)
        if record.generation != self._seen_generation:
            # another breaker sharing the store moved on; our counters were for the old state
            self._sync_locked(record)
            return record, None
        retry_at = self._now() + self._reset_timeout if state is _OPEN else 0.0
        new = BreakerRecord(state=state, retry_at=retry_at, generation=record.generation + 1)
        change: Transition | None = (record.state, state)
        if not self._store.compare_and_set(self._key, record, new):
            new = self._get(self._key)  # another breaker sharing the store moved first
            change = None
        self._sync_locked(new)
        return new, change

    def _force_state(
        self,
        state: BreakerState,
        *,
        ttl_s: float | None = None,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        change: Transition | None = None
        forced = None
        if state is _FORCED_OPEN or state is _DISABLED:
            forced = ForcedState(
                by=by or "unknown", reason=reason or "", at=time.time(), ttl_s=ttl_s
            )
        with self._lock:
            while True:
                record = self._get(self._key)
                until = self._now() + ttl_s if forced is not None and ttl_s else 0.0
                new = BreakerRecord(
                    state=state, retry_at=until, generation=record.generation + 1, forced=forced
                )
                if self._store.compare_and_set(self._key, record, new):
                    break
            self._sync_locked(new)
            self._opened_because = _forced_because(by, reason) if state is _FORCED_OPEN else None
            if record.state is not state:
                change = (record.state, state)
        if change is not None:
            self._notify_transition(change)

    def _sync_locked(self, record: BreakerRecord) -> None:
        # counters belong to one generation of the stored state; start afresh on a new one
        if record.generation != self._seen_generation:
            self._seen_generation = record.generation
            self._consecutive = 0
            self._probes_in_flight = 0
            self._probe_successes = self._probe_failures = 0
            if self._window is not None:
                self._window.clear()

    def _current_record(self, now: float) -> BreakerRecord:
        """The stored record, after moving an open breaker whose timeout passed to half-open."""
        record = self._get(self._key)
        if record.state is _CLOSED or self._due(record, now) is None:
            return record
        change: Transition | None = None
        with self._lock:
            record = self._get(self._key)
            self._sync_locked(record)
            due = self._due(record, now)
            if due is not None:
                record, change = self._move_when_due_locked(due)
        if change is not None:
            self._notify_transition(change)
        return record

    @staticmethod
    def _due(record: BreakerRecord, now: float) -> BreakerState | None:
        """Where the record moves by itself now: an open breaker's timeout passed (half-open),
        a forced state's TTL ran out (closed); else ``None``."""
        state = record.state
        if state is _CLOSED or not record.retry_at or now < record.retry_at:
            return None
        if state is _OPEN:
            return _HALF_OPEN
        if state is _FORCED_OPEN or state is _DISABLED:
            return _CLOSED
        return None

    def _move_when_due_locked(self, due: BreakerState) -> tuple[BreakerRecord, Transition | None]:
        record, change = self._transition_locked(due)
        if change is not None and due is _CLOSED:
            self._opened_because = None
            _log.warning("circuit breaker %r: the forced state's TTL ran out", self._key)
        return record, change

    def _retry_after(self, record: BreakerRecord, now: float, *, refusing: bool = False) -> float:
        if record.state is _OPEN or (record.state is _FORCED_OPEN and record.retry_at):
            return max(0.0, record.retry_at - now)
        if record.state is _FORCED_OPEN or refusing:
            # no probe is scheduled (forced) or the probes' verdict is pending: if they fail,
            # the breaker stays open for a whole reset timeout
            return self._reset_timeout
        return 0.0

    # --- listeners -----------------------------------------------------------------------------

    def _notify_transition(self, change: Transition, *, by_fleet: bool = False) -> None:
        old, new = change
        self.last_change_by_fleet = by_fleet
        by = " (fleet)" if by_fleet else ""
        if new is _CLOSED and self._refused_unlogged:
            _log.info(
                "circuit breaker %r: %s -> %s%s (refused %d call(s) since its last summary)",
                self._key,
                old.value,
                new.value,
                by,
                self._refused_unlogged,
            )
            self._refused_unlogged = 0
            self._refusals_logged_at = -math.inf
        else:
            _log.info("circuit breaker %r: %s -> %s%s", self._key, old.value, new.value, by)
        for listener in self._listeners:
            try:
                listener.on_state_change(self, old, new)  # type: ignore[arg-type]
            except Exception:
                _log.exception("circuit breaker %r: listener failed", self._key)

    def _notify_call(self, outcome: CallOutcome, duration: float) -> None:
        for listener in self._listeners:
            try:
                listener.on_call(self, outcome, duration)  # type: ignore[arg-type]
            except Exception:
                _log.exception("circuit breaker %r: listener failed", self._key)


def _forced_because(by: str | None, reason: str | None) -> str:
    because = f"forced open by {by}" if by else "forced open"
    return f"{because}: {reason}" if reason else because
