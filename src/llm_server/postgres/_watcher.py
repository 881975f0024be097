"""The release watcher: a thread that keeps what a process serves equal to what is released.

It LISTENs for release notifications and, on each one and every ``interval_s`` anyway, reads
what is released and hands every released program to the callback. Nothing is remembered as
"seen": the callback compares with what it serves, so a release whose application failed (a
transient error loading the version) is applied on the next round, and a process that served
something else meanwhile is brought back to the release.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import psycopg
from psycopg import sql

from llm_server.core.telemetry._redaction import redact
from llm_server.postgres._connections import DeadlineExceededError, bounded

__all__ = ["CHANNEL", "ReleaseWatcher"]

_log = logging.getLogger("llm_server.postgres")

CHANNEL: Final = "llm_server_releases"
"""The NOTIFY channel a promotion or rollback is announced on (payload: schema/program id)."""


class ReleaseWatcher(threading.Thread):
    """Reads what is released on every notification and every ``interval_s``, and applies it.

    Args:
        params: The connection parameters (its own connection, not the pool's).
        read: Reads ``{program_id: version}`` of what is released, on the given connection.
        on_release: Applies one release; called every round for every released program.
        interval_s: Seconds between reads when no notification comes.
        timeout_s: The longest one read may take before the connection is cut and reopened.
        stop: Set to end the thread.
        where: The server, for messages.
    """

    def __init__(
        self,
        *,
        params: dict[str, Any],
        read: Callable[[psycopg.Connection[Any]], dict[str, str]],
        on_release: Callable[[str, str], None],
        interval_s: float,
        timeout_s: float,
        stop: threading.Event,
        where: str,
    ) -> None:
        super().__init__(name="llm-server-releases", daemon=True)
        self._params = params
        self._read = read
        self._on_release = on_release
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._stopping = stop
        self._where = where
        self._failing: dict[str, str] = {}  # program id -> the error last logged

    def run(self) -> None:
        lost_since: float | None = None
        while not self._stopping.is_set():
            try:
                with psycopg.Connection.connect(**self._params) as conn:
                    with bounded(conn, self._timeout_s):
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    while not self._stopping.is_set():
                        self.apply(self._read_bounded(conn))
                        if lost_since is not None:
                            _log.info(
                                "program releases: PostgreSQL at %s is back after %.1f s",
                                self._where,
                                time.monotonic() - lost_since,
                            )
                            lost_since = None
                        self._wait_for_notification(conn)
            except (psycopg.Error, OSError, DeadlineExceededError) as exc:
                # once per outage at WARNING: a long one would otherwise log every interval
                _log.log(
                    logging.WARNING if lost_since is None else logging.DEBUG,
                    "program releases: lost PostgreSQL at %s (%s); reconnecting every %g s",
                    self._where,
                    redact(str(exc)).strip(),
                    self._interval_s,
                )
                lost_since = lost_since if lost_since is not None else time.monotonic()
                self._stopping.wait(self._interval_s)

    def _wait_for_notification(self, conn: psycopg.Connection[Any]) -> None:
        """Until a notification, ``interval_s`` or :meth:`close` (checked every 0.5 s)."""
        deadline = time.monotonic() + self._interval_s
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or any(conn.notifies(timeout=min(left, 0.5), stop_after=1)):
                return

    def _read_bounded(self, conn: psycopg.Connection[Any]) -> dict[str, str]:
        with bounded(conn, self._timeout_s):
            return self._read(conn)

    def apply(self, released: dict[str, str]) -> None:
        """Hand every release to the callback; log a failure once, retry it next round."""
        for program_id, version in released.items():
            try:
                self._on_release(program_id, version)
            except Exception as exc:
                message = f"{type(exc).__name__}: {redact(str(exc)).strip()}"
                if self._failing.get(program_id) != message:
                    self._failing[program_id] = message
                    _log.warning(
                        "program releases: serving %s %s failed (%s); retrying every %g s",
                        program_id,
                        version,
                        message,
                        self._interval_s,
                    )
            else:
                if self._failing.pop(program_id, None) is not None:
                    _log.info("program releases: %s now follows release %s", program_id, version)
