"""Canaries in PostgreSQL: one table, the running canary of a program unique by an index.

The table ``<schema>.program_canaries`` is created the first time a canary is started (the
one DDL of this module, under the migration lock); reading with no table answers "no
canaries", so a serving role that never starts one needs no more rights. Starting and ending
run in one transaction under the program's lock and are announced with ``NOTIFY``; ending
with ``promote`` records the release in the same transaction. Every replica's program manager
reads the running canaries every 0.5 s.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from llm_server.core.errors import ProgramError, ProgramNotFoundError
from llm_server.programs._canary import Canary
from llm_server.programs._postgres_connections import DeadlineExceededError, bounded
from llm_server.programs._versioning import validate_program_id, validate_version

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = ["PostgresCanaries"]

_TABLE = """
CREATE TABLE IF NOT EXISTS {schema}.program_canaries (
    id             bigserial   PRIMARY KEY,
    program_id     text        NOT NULL,
    version        text        NOT NULL,
    stable_version text        NOT NULL,
    weight         double precision NOT NULL CHECK (weight > 0 AND weight < 1),
    sticky         text        NOT NULL,
    guard          jsonb,
    actor          text,
    reason         text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,
    outcome        text        CHECK (outcome IN ('promote', 'rollback')),
    ended_by       text,
    end_reason     text,
    FOREIGN KEY (program_id, version) REFERENCES {schema}.program_versions
);
CREATE UNIQUE INDEX IF NOT EXISTS program_canaries_one_running
    ON {schema}.program_canaries (program_id) WHERE ended_at IS NULL;
"""
_COLUMNS = (
    "id, program_id, version, stable_version, weight, sticky, guard, actor, reason, "
    "started_at, ended_at, outcome, ended_by, end_reason"
)


def _canary(row: tuple[Any, ...]) -> Canary:
    names = [c.strip() for c in _COLUMNS.split(",")]
    data = dict(zip(names, row, strict=True))
    for name in ("started_at", "ended_at"):
        if data[name] is not None:
            data[name] = data[name].isoformat()
    return Canary.from_dict(data)


class PostgresCanaries:
    """The :class:`~llm_server.programs._canary.CanaryStorage` side of
    :class:`~llm_server.postgres.PostgresStorageAdapter` (mixed into it)."""

    if TYPE_CHECKING:  # what the adapter provides
        schema: str
        _stop: threading.Event
        _params: dict[str, Any]
        _timeout_s: float
        _decider_conn: psycopg.Connection[Any] | None
        _decider_held: bool

        def _session(self, what: str) -> AbstractContextManager[psycopg.Connection[Any]]: ...
        def _q(self, text: str) -> sql.Composed: ...
        def _lock_program(self, conn: psycopg.Connection[Any], program_id: str) -> None: ...
        def _record_first(
            self, conn: psycopg.Connection[Any], program_id: str, served: str, actor: str | None
        ) -> None: ...
        def _record(
            self,
            conn: psycopg.Connection[Any],
            program_id: str,
            version: str,
            action: str,
            *,
            actor: str | None,
            reason: str | None,
        ) -> Any: ...

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (followers stop reading)."""
        return self._stop.is_set()

    def hold_decider_lock(self) -> bool:
        """Take or keep the canary guard's lock for this storage's schema; whether held.

        A session advisory lock on a connection of its own: held while that connection
        lives, so a process that dies releases it at once. Used to make one process of a
        fleet without Redis the guard's decider. Never raises: ``False`` when PostgreSQL fails.
        """
        conn: psycopg.Connection[Any] | None = getattr(self, "_decider_conn", None)
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(**{**self._params, "autocommit": True})
                self._decider_conn = conn
                self._decider_held = False
            with bounded(conn, self._timeout_s):
                if self._decider_held:
                    conn.execute("SELECT 1")  # alive: the lock lives with the session
                else:
                    row = conn.execute(
                        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                        (f"llm_server:{self.schema}:canary-guard",),
                    ).fetchone()
                    self._decider_held = bool(row and row[0])
            return self._decider_held
        except (psycopg.Error, OSError, DeadlineExceededError):
            self.release_decider_lock()
            return False

    def release_decider_lock(self) -> None:
        """Give up the guard's lock (closes its connection)."""
        conn: psycopg.Connection[Any] | None = getattr(self, "_decider_conn", None)
        self._decider_conn = None
        self._decider_held = False
        if conn is not None:
            conn.close()

    def _has_canary_table(self, conn: psycopg.Connection[Any]) -> bool:
        table = sql.Identifier(self.schema, "program_canaries").as_string(conn)
        row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        return row is not None and row[0] is not None

    def _create_canary_table(self, conn: psycopg.Connection[Any]) -> None:
        if self._has_canary_table(conn):
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('llm_server:migrate', 0))")
            conn.execute(self._q(_TABLE))

    def start_canary(self, canary: Canary) -> Canary:
        """Record a new running canary and announce it (see ``CanaryStorage``).

        Raises:
            ProgramError: The program already has a running canary.
            ProgramNotFoundError: The version is not stored.
            StorageError: PostgreSQL failed or did not answer in time.
        """
        validate_program_id(canary.program_id)
        validate_version(canary.version)
        guard = json.dumps(canary.guard.to_dict()) if canary.guard is not None else None
        with self._session(f"starting a canary of {canary.program_id!r}") as conn:
            self._create_canary_table(conn)
            try:
                with conn.transaction():
                    self._lock_program(conn, canary.program_id)
                    row = conn.execute(
                        self._q(
                            "INSERT INTO {schema}.program_canaries (program_id, version, "
                            "stable_version, weight, sticky, guard, actor, reason) "
                            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}"
                        ),
                        (
                            canary.program_id,
                            canary.version,
                            canary.stable_version,
                            canary.weight,
                            canary.sticky,
                            guard,
                            canary.actor,
                            canary.reason,
                        ),
                    ).fetchone()
                    announce = f"{self.schema}/{canary.program_id}"
                    conn.execute("SELECT pg_notify(%s, %s)", (_channel(), announce))
            except psycopg.errors.UniqueViolation:
                raise ProgramError(
                    f"program {canary.program_id!r} already has a running canary: end it first"
                ) from None
            except psycopg.errors.ForeignKeyViolation:
                raise ProgramNotFoundError(
                    f"program {canary.program_id!r} has no version {canary.version!r}"
                ) from None
        assert row is not None
        return _canary(row)

    def end_canary(
        self,
        program_id: str,
        *,
        outcome: str,
        actor: str | None,
        reason: str | None,
        canary_id: str | None = None,
    ) -> Canary:
        """End the running canary; a promotion is recorded as a release in the same
        transaction (see ``CanaryStorage``).

        Raises:
            ProgramError: No running canary (or not ``canary_id``).
            StorageError: PostgreSQL failed or did not answer in time.
        """
        validate_program_id(program_id)
        if outcome not in ("promote", "rollback"):
            raise ProgramError(f"canary outcome must be 'promote' or 'rollback', not {outcome!r}")
        row = None
        with self._session(f"ending the canary of {program_id!r}") as conn:
            if self._has_canary_table(conn):
                with conn.transaction():
                    self._lock_program(conn, program_id)
                    row = conn.execute(
                        self._q(
                            "UPDATE {schema}.program_canaries SET ended_at = now(), "
                            "outcome = %s, ended_by = %s, end_reason = %s "
                            "WHERE program_id = %s AND ended_at IS NULL "
                            "AND (%s::bigint IS NULL OR id = %s::bigint) "
                            f"RETURNING {_COLUMNS}"
                        ),
                        (outcome, actor, reason, program_id, canary_id, canary_id),
                    ).fetchone()
                    if row is not None and outcome == "promote":
                        ended = _canary(row)
                        self._record_first(conn, program_id, ended.stable_version, actor)
                        why = f"canary {ended.id} promoted" + (f": {reason}" if reason else "")
                        self._record(
                            conn, program_id, ended.version, "promote", actor=actor, reason=why
                        )
                    conn.execute(
                        "SELECT pg_notify(%s, %s)", (_channel(), f"{self.schema}/{program_id}")
                    )
        if row is None:
            raise ProgramError(f"program {program_id!r} has no running canary to end")
        return _canary(row)

    def canaries(self, program_id: str | None = None) -> list[Canary]:
        """Every canary (of ``program_id``), oldest first.

        Raises:
            StorageError: PostgreSQL failed or did not answer in time.
        """
        with self._session("reading the canaries") as conn:
            if not self._has_canary_table(conn):
                return []
            rows = conn.execute(
                self._q(
                    f"SELECT {_COLUMNS} FROM {{schema}}.program_canaries "
                    "WHERE %s::text IS NULL OR program_id = %s::text ORDER BY id"
                ),
                (program_id, program_id),
            ).fetchall()
        return [_canary(r) for r in rows]

    def active_canaries(self) -> dict[str, Canary]:
        """The running canary of each program that has one.

        Raises:
            StorageError: PostgreSQL failed or did not answer in time.
        """
        with self._session("reading the running canaries") as conn:
            if not self._has_canary_table(conn):
                return {}
            rows = conn.execute(
                self._q(
                    f"SELECT {_COLUMNS} FROM {{schema}}.program_canaries WHERE ended_at IS NULL"
                )
            ).fetchall()
        return {r[1]: _canary(r) for r in rows}


def _channel() -> str:
    from llm_server.programs._postgres_watcher import CHANNEL

    return CHANNEL
