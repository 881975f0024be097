"""The fleet connection's two background threads: the sync thread and the writer thread.

The sync thread, every 100 ms, sends every part's background writes (:data:`Stage`) in one
round trip, runs the once-a-second work (re-reads), hands pub/sub messages to their listeners
meanwhile, and, while the process is in fallback, checks Redis once a second and resyncs when
it answers. The writer thread writes what the request path queued and must not wait 100 ms
for (breaker failures, transitions, probe leases and verdicts): it sleeps until woken.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_server.fleet._batch import RedisFailure, ScriptBatch, Stage

if TYPE_CHECKING:
    from llm_server.fleet._connection import FleetConnection

__all__ = ["FLUSH_INTERVAL_S", "MISCONFIGURED_RETRY_S", "SYNC_INTERVAL_S", "SyncThreads"]

_log = logging.getLogger("llm_server.fleet")

SYNC_INTERVAL_S = 1.0
"""How often every process re-reads the shared breaker states (besides pub/sub)."""
FLUSH_INTERVAL_S = 0.1
"""How often aggregated outcomes and settled limits are written."""
MISCONFIGURED_RETRY_S = 10.0
"""How often a process whose Redis refused for a configuration reason checks it again."""


class SyncThreads:
    """The work registered by the fleet's parts, and the two threads that do it.

    Args:
        connection: The process's fleet connection (its client, fallback switch and checks).
    """

    def __init__(self, connection: FleetConnection) -> None:
        self._conn = connection
        self.turn = time.monotonic()
        """When the sync thread last finished a turn."""
        self.suspect = threading.Event()
        """Set after a timeout: the sync thread checks Redis patiently on its next turn."""
        self.wake = threading.Event()
        """Set to have the writer thread run its work now."""
        self._periodic: list[Callable[[], None]] = []
        self._flushers: list[Callable[[], None]] = []
        self._stages: list[Stage] = []
        self._urgent: list[Callable[[], None]] = []
        self._resyncs: list[Callable[[], None]] = []
        self.listeners: dict[str, Callable[[str], None]] = {}
        """Pub/sub channels and what takes their messages."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None

    # --- registering work -------------------------------------------------------------------

    def on_sync(
        self,
        *,
        periodic: Callable[[], None] | None = None,
        flush: Callable[[], None] | None = None,
        resync: Callable[[], None] | None = None,
        channel: tuple[str, Callable[[str], None]] | None = None,
        stage: Stage | None = None,
    ) -> None:
        """See :meth:`FleetConnection.on_sync`."""
        if periodic is not None:
            self._periodic.append(periodic)
        if flush is not None:
            self._flushers.append(flush)
        if stage is not None:
            self._stages.append(stage)
        if resync is not None:
            self._resyncs.append(resync)
        if channel is not None:
            self.listeners[channel[0]] = channel[1]

    def urgent(self, write: Callable[[], None]) -> None:
        """See :meth:`FleetConnection.urgent`."""
        self._urgent.append(write)

    # --- starting and stopping --------------------------------------------------------------

    def start(self) -> None:
        """Start both threads (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="llm-server-fleet-sync", daemon=True
            )
            self._thread.start()
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop, name="llm-server-fleet-writer", daemon=True
            )
            self._writer.start()

    def stop(self) -> None:
        """Stop both threads (waits up to 2 s for each)."""
        self._stop.set()
        self.wake.set()
        for thread in (self._thread, self._writer):
            if thread is not None:
                thread.join(timeout=2)
        self._thread = self._writer = None

    # --- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        retry = False
        while not self._stop.is_set():
            # idle: sleep until woken (a call queued work, Redis answers again, close());
            # after a failed write: try again in 100 ms
            self.wake.wait(FLUSH_INTERVAL_S if retry else None)
            self.wake.clear()
            if self._stop.is_set():
                break
            if self._conn.fallback:
                retry = False  # recovering wakes it
                continue
            # while a request-path command timed out lately, calls queue work without waking
            # the writer (a probe's verdict): it looks every 100 ms until that second passed
            retry = not self.write_urgent() or not self._conn.reliable()

    def write_urgent(self) -> bool:
        """Run the writer's work once; whether it all went through."""
        for write in self._urgent:
            try:
                write()
            except (TimeoutError, RedisTimeoutError) as exc:
                self._conn.timed_out(exc)  # (retried in 100 ms)
                return False
            except RedisFailure as exc:
                self._conn.degrade(exc)
                return False
            except Exception:  # a bug here must not end the thread: log it and go on
                _log.exception("fleet: writer thread error")
        return True

    # --- the sync thread --------------------------------------------------------------------

    def run_stages(self, stages: Sequence[Stage]) -> None:
        """Send what ``stages`` add in one round trip and hand each its replies (raises)."""
        batch = ScriptBatch()
        settles: list[tuple[Callable[[list[Any] | None], None], int, int]] = []
        for stage in stages:
            start = len(batch.calls)
            settle = stage(batch)
            if settle is not None:
                settles.append((settle, start, len(batch.calls)))
        if not batch.calls:
            return
        try:
            replies = batch.run(self._conn.client)
        except RedisFailure:
            for settle, _, _ in settles:
                settle(None)
            raise
        for settle, start, end in settles:
            settle(replies[start:end])

    def flush(self) -> None:
        """Send every part's background writes now (what the sync thread does every turn):
        the stages' batch, then each flusher; the first that fails ends the turn."""
        sends: list[Callable[[], None]] = [
            functools.partial(self.run_stages, self._stages),
            *self._flushers,
        ]
        for send in sends:
            if not self._sent(send):
                return

    def _sent(self, send: Callable[[], None]) -> bool:
        """Run one send; whether it went through. A timeout is noted and checked patiently
        on the next turn; another failure falls back."""
        try:
            send()
        except (TimeoutError, RedisTimeoutError) as exc:
            self._conn.note(exc, "timeout")
            self.suspect.set()
            return False
        except RedisFailure as exc:
            self._conn.degrade(exc)
            return False
        return True

    def _run(self) -> None:
        conn = self._conn
        pubsub: Any = None
        next_sync = 0.0
        while not self._stop.is_set():
            if conn.fallback:
                if pubsub is not None:
                    pubsub.close()
                    pubsub = None
                if self._wait_for_redis():
                    next_sync = 0.0
                self.turn = time.monotonic()
                continue
            if self.suspect.is_set() and not self._verify():
                continue
            try:
                if pubsub is None and self.listeners:
                    pubsub = conn.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(*self.listeners)
                now = time.monotonic()
                if now >= next_sync:
                    next_sync = now + SYNC_INTERVAL_S
                    for periodic in self._periodic:
                        periodic()
                self.flush()
                self.turn = time.monotonic()
                self._listen(pubsub, FLUSH_INTERVAL_S)
            except (TimeoutError, RedisTimeoutError) as exc:
                conn.note(exc, "timeout")
                self.suspect.set()  # checked patiently on the next turn
            except RedisFailure as exc:
                conn.degrade(exc)
            except Exception:  # a bug here must not end the thread: log it and go on
                _log.exception("fleet: sync thread error")
                self._stop.wait(SYNC_INTERVAL_S)
        if pubsub is not None:
            pubsub.close()

    def _verify(self) -> bool:
        """After a timeout: is Redis there (a ping allowed 1 s)? Falls back if not."""
        self.suspect.clear()
        try:
            self._conn.patient.ping()
        except RedisFailure as exc:
            self._conn.degrade(exc)
            return False
        return True

    def _wait_for_redis(self) -> bool:
        """In fallback: check Redis once a second (every 10 s while misconfigured) with what
        the fleet needs, a write included; resync when it passes (returns whether)."""
        conn = self._conn
        wait = SYNC_INTERVAL_S if conn.misconfigured is None else MISCONFIGURED_RETRY_S
        if self._stop.wait(wait):
            return False
        try:
            conn.exercise(conn.client)
        except RedisFailure as exc:
            conn.degrade(exc)  # (logs nothing new: already in fallback, same reason)
            return False
        for hook in self._resyncs:
            try:
                hook()
            except RedisFailure:
                return False  # failed again: stay in fallback, the next ping retries
        conn.recovered()
        self.wake.set()  # what waited to be written (probe verdicts...) is written now
        return not conn.fallback

    def _listen(self, pubsub: Any, seconds: float) -> None:
        """Hand pub/sub messages to their listeners for ``seconds`` (or just wait)."""
        if pubsub is None:
            self._stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stop.is_set():
            message = pubsub.get_message(timeout=left)
            if message is not None and message.get("type") == "message":
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        data = message.get("data")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if isinstance(data, bytes):
            data = data.decode()
        listener = self.listeners.get(str(channel))
        if listener is not None:
            listener(str(data))
