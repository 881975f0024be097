"""Circuit breakers shared by a fleet through Redis (a :class:`SharedBreakerStore`).

Each process keeps a local copy of every breaker's record: the closed-state hot path reads it
and makes no round trip. The copy is refreshed by pub/sub (every transition publishes the
new record, adopted without a read) and re-read every second. Writes are rare and atomic
(one Lua script each): transitions (compare-and-set on state and generation), failures (they
may trip the fleet), successes (summed and written every 100 ms), half-open probe leases and
verdicts.

Nothing on an event loop waits for Redis: there, failures, transitions, lease requests and
verdicts are queued for the connection's writer thread, which writes them at once (woken by
the call) and adopts what Redis answers. A transition is applied to the local copy first and
undone if Redis refuses it; a half-open call that has no lease yet is refused while the
writer asks for one (the next call uses it). A refused lease is remembered for its
generation (until the first lease expires, at most a second), so refusals cost no round trip.
A probe's verdict is retried until Redis takes it or the lease expired. In a thread without
an event loop (a synchronous program) outcomes, leases and verdicts are written at once,
outside the breaker's lock; transitions, decided under that lock, are queued for the writer
thread there too.

Generations never go back: a read older than the local copy is ignored, and a record Redis
lost (a restart without persistence) is written again from the local copy, so a generation
number is never reused for another state.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from llm_server.core.reliability._breaker_types import (
    BreakerRecord,
    BreakerState,
    CallOutcome,
    FleetPolicy,
    ForcedState,
)
from llm_server.fleet import _scripts
from llm_server.fleet._breaker_entries import (
    FORCED,
    READ_STRIDE,
    STATES,
    Entry,
    Verdict,
    cas_args,
    forced_state,
    lease_args,
    outcome_args,
    text,
    verdict_args,
)
from llm_server.fleet._connection import (
    SYNC_INTERVAL_S,
    FleetConnection,
    RedisFailure,
    ScriptBatch,
    on_event_loop,
)

__all__ = ["RedisBreakerStore"]

_log = logging.getLogger("llm_server.fleet")
_CLOSED = BreakerRecord()
_KEEP: Any = object()  # _store: a reply without who forced the state (keep what we know)


class RedisBreakerStore:
    """Breaker state shared through Redis, read from a local copy.

    Args:
        connection: The process's fleet connection.
    """

    def __init__(self, connection: FleetConnection) -> None:
        self._conn = connection
        self._records: dict[str, BreakerRecord] = {}
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        # held while queued transitions are written: a worker thread's round trip that
        # depends on them (a lease, an outcome, a verdict) waits until they are in Redis
        self._writing = threading.Lock()
        self._leases: dict[str, list[tuple[str, float]]] = {}
        self._lease_ids = itertools.count()
        self._unwritten = 0  # failures queued and not yet written
        self._next_refresh = 0.0  # when the sync thread re-reads every record
        self.remembered_refusals = 0
        """Half-open calls refused from a remembered lease refusal (no round trip)."""
        client = connection.client
        self._read = client.register_script(_scripts.BREAKER_READ)
        self._cas = client.register_script(_scripts.BREAKER_CAS)
        self._outcomes = client.register_script(_scripts.BREAKER_OUTCOMES)
        self._probe = client.register_script(_scripts.BREAKER_PROBE)
        self.channel = connection.key("cb")
        connection.on_sync(
            stage=self.stage,
            resync=self.resync,
            channel=(self.channel, self._changed),
        )
        connection.urgent(self.write)

    # --- BreakerStateStore -------------------------------------------------------------------

    def get(self, name: str) -> BreakerRecord:
        """The local copy of the breaker's record (no I/O)."""
        return self._records.get(name, _CLOSED)

    def compare_and_set(self, name: str, expected: BreakerRecord, new: BreakerRecord) -> bool:
        """Move the breaker fleet-wide if nobody moved it first (locally while Redis is down).

        The local copy moves now and the writer thread tells Redis; if Redis refuses
        (another process moved first), its record replaces the local one. Never a round trip
        here, on an event loop or in a worker thread alike: the breaker calls this holding
        its lock, which the event loop's calls also take.
        """
        entry = self._entries.get(name)
        with self._lock:
            if not self._swap_locked(name, expected, new):
                return False
            if entry is None or not self._conn.reliable():
                return True
            entry.transitions.append((expected, new))
        self._conn.wake()
        return True

    def _swap_locked(self, name: str, expected: BreakerRecord, new: BreakerRecord) -> bool:
        current = self._records.get(name, _CLOSED)
        if (current.state, current.generation) != (expected.state, expected.generation):
            return False
        self._records[name] = new
        return True

    # --- SharedBreakerStore ------------------------------------------------------------------

    def register(
        self,
        name: str,
        policy: FleetPolicy,
        on_change: Callable[[BreakerRecord, BreakerRecord], None],
    ) -> None:
        """Declare a breaker and read its shared record (creating one writes nothing)."""
        base = self._conn.key("cb", name)
        self._entries[name] = Entry(policy, on_change, (base, f"{base}:w", f"{base}:p"))
        if not self._conn.fallback:
            try:  # this breaker's record only: the others were read when they registered
                reply = self._read(keys=[base])
                self._store_read(name, reply, notify=False)
            except RedisFailure as exc:
                self._conn.failed(exc)

    def deciding(self) -> bool:
        """Whether Redis decides: not while the process fell back to local state, nor for a
        second after a request-path command timed out (its writes may be lost), nor while
        failures of this process wait to be written (the fleet has not counted them yet)."""
        return self._conn.reliable() and not self._unwritten

    def report(
        self, name: str, generation: int, *, failed: bool, consecutive: int
    ) -> BreakerRecord | None:
        """Count an outcome: a failure is written now (it may trip the fleet), successes later.

        On an event loop the failure is queued for the writer thread and ``None`` returned.
        """
        entry = self._entries.get(name)
        if entry is None or not self._conn.reliable():
            return None
        if not failed:
            with self._lock:
                if entry.generation != generation:
                    entry.successes, entry.generation = 0, generation
                entry.successes += 1
            return None
        with self._lock:
            pending = entry.successes if entry.generation == generation else 0
            entry.successes = 0
            if on_event_loop():
                if entry.failure_generation != generation or not entry.failures:
                    entry.failure_generation, entry.consecutive = generation, -1
                    entry.failures = entry.failure_calls = 0
                entry.failures += 1
                entry.failure_calls += pending + 1
                if pending or entry.consecutive >= 0:
                    entry.consecutive = consecutive
                self._unwritten += 1
                queued = True
            else:
                queued = False
        if queued:
            self._conn.wake()
            return None
        # after a success of its own, the process says how many failures followed it
        try:
            self._write_queued_transitions(entry, name)
            reply = self._write_outcomes(
                entry,
                name,
                generation,
                calls=pending + 1,
                failures=1,
                consecutive=consecutive if pending else -1,
            )
        except RedisFailure as exc:
            self._conn.failed(exc)
            return None
        return self._store(name, reply[1:4])

    def lease_probe(self, name: str, generation: int) -> bool | None:
        """Take one of the fleet's probe permits, a lease that expires by itself.

        A refusal is remembered for the generation; on an event loop a call without a lease
        is refused while the writer thread asks for one.
        """
        entry = self._entries.get(name)
        if entry is None or not self._conn.reliable():
            return None
        now = time.monotonic()
        with self._lock:
            ready = entry.lease_ready
            if ready is not None and ready[0] == generation and now < ready[2]:
                entry.lease_ready = None
                self._leases.setdefault(name, []).append((ready[1], ready[2]))
                return True
            denied = entry.denied
            if denied is not None and denied[0] == generation and now < denied[1]:
                self.remembered_refusals += 1
                return False
            if on_event_loop():
                entry.lease_wanted = generation
                queued = True
            else:
                queued = False
        if queued:
            self._conn.wake()
            return False
        try:
            self._write_queued_transitions(entry, name)
            granted = self._take_lease(entry, name, generation, notify=False)
        except RedisFailure as exc:
            self._conn.failed(exc)
            return None
        if granted is not None:
            with self._lock:
                self._leases.setdefault(name, []).append(granted)
        return granted is not None

    def probe_done(self, name: str, generation: int, outcome: CallOutcome) -> BreakerRecord | None:
        """Return the lease with the probe's verdict; the fleet closes or re-opens.

        A verdict that cannot be written now (an event loop, or Redis failed) is queued and
        retried until Redis takes it or its lease expired.
        """
        entry = self._entries.get(name)
        with self._lock:
            leases = self._leases.get(name)
            lease = leases.pop() if leases else None
        if entry is None or lease is None:
            return None
        verdict = Verdict(generation, lease[0], outcome, lease[1])
        reliable = self._conn.reliable()
        if not reliable or on_event_loop():
            with self._lock:
                entry.verdicts.append(verdict)
            if reliable:
                self._conn.wake()
            return None
        try:
            self._write_queued_transitions(entry, name)
            reply = self._verdict_call(entry, name, verdict)
        except RedisFailure as exc:
            with self._lock:
                entry.verdicts.append(verdict)
            self._conn.failed(exc)
            return None
        return self._store(name, reply[1:4])

    # --- the writer thread -------------------------------------------------------------------

    def write(self) -> None:
        """Write what calls on an event loop queued (the writer thread, when woken)."""
        for name, entry in list(self._entries.items()):
            with self._lock:
                verdicts, entry.verdicts = entry.verdicts, []
                wanted, entry.lease_wanted = entry.lease_wanted, None
                failures = (entry.failure_generation, entry.failure_calls, entry.failures)
                consecutive = entry.consecutive
                self._unwritten -= entry.failures
                entry.failures = entry.failure_calls = 0
            try:
                self._write_queued_transitions(entry, name)
                if failures[2]:
                    reply = self._write_outcomes(
                        entry,
                        name,
                        failures[0],
                        calls=failures[1],
                        failures=failures[2],
                        consecutive=consecutive,
                    )
                    self._store(name, reply[1:4], notify=True)
                now = time.monotonic()
                while verdicts:
                    if now < verdicts[0].until:  # else Redis dropped the lease already
                        reply = self._verdict_call(entry, name, verdicts[0])
                        self._store(name, reply[1:4], notify=True)
                    verdicts.pop(0)
                if wanted is not None and not self._lease_known(entry, wanted):
                    granted = self._take_lease(entry, name, wanted, notify=True)
                    if granted is not None:
                        with self._lock:
                            entry.lease_ready = (wanted, *granted)
            except RedisFailure:
                # transitions and counts were decided locally already; verdicts are retried
                with self._lock:
                    entry.verdicts[:0] = verdicts
                raise

    def _write_queued_transitions(self, entry: Entry, name: str) -> None:
        """Write the breaker's queued transitions, in order (the writer thread, or a worker
        thread before a round trip that depends on them, outside the breaker's lock)."""
        with self._writing:
            with self._lock:
                transitions, entry.transitions = entry.transitions, []
            self._write_transitions(entry, name, transitions)

    def _write_transitions(
        self, entry: Entry, name: str, transitions: list[tuple[BreakerRecord, BreakerRecord]]
    ) -> None:
        for expected, new in transitions:
            reply = self._cas_call(entry, name, expected, new)
            if not reply[0]:  # another process moved first: its record wins
                self._store(name, reply[1:4], notify=True, force=True)
                return

    def _lease_known(self, entry: Entry, generation: int) -> bool:
        """Whether a lease for ``generation`` is ready, or its refusal still remembered."""
        now = time.monotonic()
        with self._lock:
            ready, denied = entry.lease_ready, entry.denied
        return (ready is not None and ready[0] == generation and now < ready[2]) or (
            denied is not None and denied[0] == generation and now < denied[1]
        )

    def _take_lease(
        self, entry: Entry, name: str, generation: int, *, notify: bool
    ) -> tuple[str, float] | None:
        """Ask Redis for a lease: ``(lease id, expiry)`` when granted; a refusal is kept."""
        lease = f"{self._conn.process_id}:{next(self._lease_ids)}"
        policy = entry.policy
        asked = time.monotonic()
        reply = self._probe(keys=entry.keys, args=lease_args(entry, generation, lease))
        self._store(name, reply[1:4], notify=notify)
        if reply[0]:
            return lease, asked + policy.probe_lease_s
        if int(reply[2]) == generation:
            wait = min(SYNC_INTERVAL_S, int(reply[4]) / 1000)
            with self._lock:
                entry.denied = (generation, time.monotonic() + wait)
        return None

    # --- the sync thread ---------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Re-read every breaker's record (``force``: adopt it even if older than ours)."""
        if not self._entries:
            return
        names = list(self._entries)
        reply = self._read(keys=[self._entries[n].keys[0] for n in names])
        for index, name in enumerate(names):
            at = READ_STRIDE * index
            self._store_read(name, reply[at : at + READ_STRIDE], force=force)

    def resync(self) -> None:
        """After Redis failed: adopt the fleet's records (local decisions were local)."""
        self.refresh(force=True)

    def flush(self) -> None:
        """Write the successes counted since the last flush (every breaker's, one round trip)."""
        self._conn.run_stages([self.stage])

    def stage(self, batch: ScriptBatch) -> Callable[[list[Any] | None], None] | None:
        """Add the successes counted since the last flush to the sync thread's batch (one
        script per breaker that had any; every model's in the same round trip), and once a
        second the re-read of every breaker's record (one script for all)."""
        names: list[str] = []
        now = time.monotonic()
        read: list[str] = []
        if now >= self._next_refresh and self._entries:
            self._next_refresh = now + SYNC_INTERVAL_S
            read = list(self._entries)
            batch.add(self._read, [self._entries[n].keys[0] for n in read], [])
        for name, entry in self._entries.items():
            with self._lock:
                successes, generation = entry.successes, entry.generation
                entry.successes = 0
            if successes:
                batch.add(
                    self._outcomes,
                    entry.keys,
                    outcome_args(
                        entry,
                        generation,
                        calls=successes,
                        failures=0,
                        consecutive=0,
                        channel=self.channel,
                        name=name,
                    ),
                )
                names.append(name)
        if not (names or read):
            return None

        def settle(replies: list[Any] | None) -> None:
            if replies is None:
                self._next_refresh = 0.0  # failed: re-read on the next turn
                return
            if read:
                for index, name in enumerate(read):
                    at = READ_STRIDE * index
                    self._store_read(name, replies[0][at : at + READ_STRIDE])
            for name, reply in zip(names, replies[1 if read else 0 :], strict=True):
                self._store(name, reply[1:4], notify=True)

        return settle

    def _changed(self, message: str) -> None:
        """A transition's message: the breaker's new record (read back if the message has
        only the name, as an older version of this library sends it)."""
        name: str = message
        values: list[Any] | None = None
        if message.startswith("["):
            with contextlib.suppress(ValueError, TypeError, IndexError):
                decoded = json.loads(message)
                name, values = str(decoded[0]), list(decoded[1:])
        entry = self._entries.get(name)
        if entry is None:
            return
        if values is None or len(values) != READ_STRIDE:
            values = self._read(keys=[entry.keys[0]])
        self._store_read(name, values)

    def _store_read(
        self, name: str, values: Any, *, notify: bool = True, force: bool = False
    ) -> None:
        """Adopt one breaker's values from BREAKER_READ."""
        self._store(
            name,
            values[0:3],
            notify=notify,
            force=force,
            exists=bool(int(values[3])),
            forced=forced_state(text(values[0]), values[4:8]),
        )

    # --- helpers -----------------------------------------------------------------------------

    def _cas_call(
        self, entry: Entry, name: str, expected: BreakerRecord, new: BreakerRecord
    ) -> Any:
        return self._cas(keys=entry.keys, args=cas_args(entry, expected, new, self.channel, name))

    def _verdict_call(self, entry: Entry, name: str, verdict: Verdict) -> Any:
        return self._probe(keys=entry.keys, args=verdict_args(entry, verdict, self.channel, name))

    def _write_outcomes(
        self,
        entry: Entry,
        name: str,
        generation: int,
        *,
        calls: int,
        failures: int,
        consecutive: int,
    ) -> Any:
        return self._outcomes(
            keys=entry.keys,
            args=outcome_args(
                entry,
                generation,
                calls=calls,
                failures=failures,
                consecutive=consecutive,
                channel=self.channel,
                name=name,
            ),
        )

    def _store(
        self,
        name: str,
        reply: Any,
        *,
        notify: bool = False,
        force: bool = False,
        exists: bool = True,
        forced: ForcedState | None = _KEEP,
    ) -> BreakerRecord:
        """Adopt Redis's record unless it is older than the local copy (a stale read).

        ``force``: adopt it anyway (Redis refused our transition, or we resync after a
        fallback). ``exists=False`` with a local generation above 0: Redis lost the record;
        it is written again from the local copy (generations go on, never restart at 0).
        """
        state = STATES.get(text(reply[0]), BreakerState.CLOSED)
        remaining_ms = int(reply[2])
        timed = state is BreakerState.OPEN or (state in FORCED and remaining_ms >= 0)
        entry = self._entries.get(name)
        # Redis says how much time is left; the breaker compares retry_at with its own clock
        now = entry.policy.monotonic if entry is not None else time.monotonic
        reseed = False
        with self._lock:
            old = self._records.get(name, _CLOSED)
            if forced is _KEEP:  # the reply does not say who forced it: what we know, if ours
                forced = (
                    old.forced if (old.state, old.generation) == (state, int(reply[1])) else None
                )
            record = BreakerRecord(
                state=state,
                retry_at=now() + remaining_ms / 1000 if timed else 0.0,
                generation=int(reply[1]),
                forced=forced,
            )
            if not exists and old.generation > record.generation and entry is not None:
                if not entry.transitions:
                    entry.transitions.append((record, old))
                reseed = True
            elif not force and record.generation < old.generation:
                return old  # read before a newer write of ours or a newer read landed
            else:
                same = (old.state, old.generation, old.forced) == (
                    record.state,
                    record.generation,
                    record.forced,
                )
                # an open record's end is corrected when Redis's clock says otherwise (> 50 ms)
                if same and abs(old.retry_at - record.retry_at) < 0.05:
                    return old  # keep the copy the breaker compares with
                self._records[name] = record
        if reseed:
            _log.warning(
                "fleet: breaker %r: Redis lost its record (generation %d here); writing it again",
                name,
                old.generation,
            )
            self._conn.wake()
            return old
        if (
            notify
            and entry is not None
            and (old.state, old.generation) != (record.state, record.generation)
        ):
            try:
                entry.on_change(old, record)
            except Exception:
                _log.exception("fleet: breaker %r: change handler failed", name)
        return record
