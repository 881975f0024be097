"""Circuit breakers shared by a fleet through Redis (a :class:`SharedBreakerStore`).

Each process keeps a local copy of every breaker's record: the closed-state hot path reads it
and makes no round trip. The copy is refreshed by pub/sub (every transition publishes) and
re-read every second. Writes are rare and atomic (one Lua script each): transitions
(compare-and-set on state and generation), failures (at once: they may trip the fleet),
successes (summed and written every 100 ms), half-open probe leases and verdicts.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llm_server.core.reliability._breaker_types import (
    BreakerRecord,
    BreakerState,
    CallOutcome,
    FleetPolicy,
)
from llm_server.fleet import _scripts
from llm_server.fleet._connection import FleetConnection, RedisFailure

__all__ = ["RedisBreakerStore"]

_log = logging.getLogger("llm_server.fleet")
_CLOSED = BreakerRecord()
_STATES = {state.value: state for state in BreakerState}


@dataclass(slots=True)
class _Entry:
    policy: FleetPolicy
    on_change: Callable[[BreakerRecord, BreakerRecord], None]
    keys: tuple[str, str, str]  # hash, window, probes
    successes: int = 0  # closed-state successes not yet written
    generation: int = 0  # ... in this generation


class RedisBreakerStore:
    """Breaker state shared through Redis, read from a local copy.

    Args:
        connection: The process's fleet connection.
    """

    def __init__(self, connection: FleetConnection) -> None:
        self._conn = connection
        self._records: dict[str, BreakerRecord] = {}
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._leases: dict[str, list[str]] = {}
        self._lease_ids = itertools.count()
        client = connection.client
        self._read = client.register_script(_scripts.BREAKER_READ)
        self._cas = client.register_script(_scripts.BREAKER_CAS)
        self._outcomes = client.register_script(_scripts.BREAKER_OUTCOMES)
        self._probe = client.register_script(_scripts.BREAKER_PROBE)
        self.channel = connection.key("cb")
        connection.on_sync(
            periodic=self.refresh,
            flush=self.flush,
            resync=self.refresh,
            channel=(self.channel, self._changed),
        )

    # --- BreakerStateStore -------------------------------------------------------------------

    def get(self, name: str) -> BreakerRecord:
        """The local copy of the breaker's record (no I/O)."""
        return self._records.get(name, _CLOSED)

    def compare_and_set(self, name: str, expected: BreakerRecord, new: BreakerRecord) -> bool:
        """Move the breaker fleet-wide if nobody moved it first (locally while Redis is down)."""
        entry = self._entries.get(name)
        if entry is not None and self._conn.reliable():
            open_ms = max(1, math.ceil((new.retry_at - time.monotonic()) * 1000))
            try:
                reply = self._cas(
                    keys=entry.keys,
                    args=[
                        expected.state.value,
                        expected.generation,
                        new.state.value,
                        new.generation,
                        open_ms if new.state is BreakerState.OPEN else 0,
                        self.channel,
                        name,
                    ],
                )
            except RedisFailure as exc:
                self._conn.failed(exc)
            else:
                self._store(name, reply[1:4])
                return bool(reply[0])
        with self._lock:
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
        self._entries[name] = _Entry(policy, on_change, (base, f"{base}:w", f"{base}:p"))
        if not self._conn.fallback:
            try:  # this breaker's record only: the others were read when they registered
                self._store(name, self._read(keys=[base]))
            except RedisFailure as exc:
                self._conn.failed(exc)

    def deciding(self) -> bool:
        """Whether Redis decides: not while the process fell back to local state, nor for a
        second after a request-path command timed out (its writes may be lost)."""
        return self._conn.reliable()

    def report(
        self, name: str, generation: int, *, failed: bool, consecutive: int
    ) -> BreakerRecord | None:
        """Count an outcome: a failure is written now (it may trip the fleet), successes later."""
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
        # after a success of its own, the process says how many failures followed it
        try:
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
        """Take one of the fleet's probe permits, a lease that expires by itself."""
        entry = self._entries.get(name)
        if entry is None or not self._conn.reliable():
            return None
        lease = f"{self._conn.process_id}:{next(self._lease_ids)}"
        policy = entry.policy
        try:
            reply = self._probe(
                keys=entry.keys,
                args=[
                    "lease",
                    generation,
                    lease,
                    policy.half_open_max_calls,
                    math.ceil(policy.probe_lease_s * 1000),
                ],
            )
        except RedisFailure as exc:
            self._conn.failed(exc)
            return None
        self._store(name, reply[1:4])
        if reply[0]:
            with self._lock:
                self._leases.setdefault(name, []).append(lease)
        return bool(reply[0])

    def probe_done(self, name: str, generation: int, outcome: CallOutcome) -> BreakerRecord | None:
        """Return the lease with the probe's verdict; the fleet closes or re-opens."""
        entry = self._entries.get(name)
        with self._lock:
            leases = self._leases.get(name)
            lease = leases.pop() if leases else None
        if entry is None or lease is None or not self._conn.reliable():
            return None
        policy = entry.policy
        try:
            reply = self._probe(
                keys=entry.keys,
                args=[
                    "done",
                    generation,
                    lease,
                    outcome.value,
                    policy.half_open_max_calls,
                    policy.failure_rate or 0,
                    math.ceil(policy.reset_timeout_s * 1000),
                    self.channel,
                    name,
                ],
            )
        except RedisFailure as exc:
            self._conn.failed(exc)
            return None
        return self._store(name, reply[1:4])

    # --- the sync thread ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read every breaker's record."""
        if not self._entries:
            return
        names = list(self._entries)
        reply = self._read(keys=[self._entries[n].keys[0] for n in names])
        for index, name in enumerate(names):
            self._store(name, reply[3 * index : 3 * index + 3], notify=True)

    def flush(self) -> None:
        """Write the successes counted since the last flush (one script per breaker)."""
        for name, entry in self._entries.items():
            with self._lock:
                successes, generation = entry.successes, entry.generation
                entry.successes = 0
            if successes:
                reply = self._write_outcomes(
                    entry, name, generation, calls=successes, failures=0, consecutive=0
                )
                self._store(name, reply[1:4], notify=True)

    def _changed(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None:
            return
        self._store(name, self._read(keys=[entry.keys[0]]), notify=True)

    # --- helpers -----------------------------------------------------------------------------

    def _write_outcomes(
        self,
        entry: _Entry,
        name: str,
        generation: int,
        *,
        calls: int,
        failures: int,
        consecutive: int,
    ) -> Any:
        policy = entry.policy
        width = max(1, math.ceil(policy.window_s / 60))
        return self._outcomes(
            keys=entry.keys,
            args=[
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
                self.channel,
                name,
            ],
        )

    def _store(self, name: str, reply: Any, *, notify: bool = False) -> BreakerRecord:
        state = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        remaining_ms = int(reply[2])
        record = BreakerRecord(
            state=_STATES.get(state, BreakerState.CLOSED),
            retry_at=time.monotonic() + remaining_ms / 1000 if state == "open" else 0.0,
            generation=int(reply[1]),
        )
        with self._lock:
            old = self._records.get(name, _CLOSED)
            same = (old.state, old.generation) == (record.state, record.generation)
            # an open record's end is corrected when Redis's clock says otherwise (> 50 ms)
            if same and abs(old.retry_at - record.retry_at) < 0.05:
                return old  # keep the copy the breaker compares with
            self._records[name] = record
        entry = self._entries.get(name)
        if (
            notify
            and entry is not None
            and (old.state, old.generation)
            != (
                record.state,
                record.generation,
            )
        ):
            try:
                entry.on_change(old, record)
            except Exception:
                _log.exception("fleet: breaker %r: change handler failed", name)
        return record
