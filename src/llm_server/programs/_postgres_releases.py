"""Releases in PostgreSQL: promote, roll back, the history, what is released, the watcher.

Mixed into :class:`~llm_server.postgres.PostgresStorageAdapter`. A release is one row of
``program_releases``, inserted under the program's advisory lock and announced with
``NOTIFY`` on :data:`~llm_server.postgres.CHANNEL` in the same transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import sql

from llm_server.core.errors import ProgramError, ProgramNotFoundError
from llm_server.programs._postgres_watcher import CHANNEL, ReleaseWatcher
from llm_server.programs._versioning import release_stack, validate_program_id, validate_version

__all__ = ["PostgresReleases", "Release"]


class Release(dict[str, Any]):
    """One promotion or rollback: ``id``, ``program_id``, ``version``, ``action``, ``actor``,
    ``reason``, ``released_at`` (ISO-8601 UTC)."""


class PostgresReleases:
    """The storage's release methods (mixed into ``PostgresStorageAdapter``)."""

    schema: str
    display_url: str
    _params: dict[str, Any]
    _timeout_s: float
    _stop: threading.Event
    _watchers: list[ReleaseWatcher]

    def _q(self, text: str) -> sql.Composed:
        raise NotImplementedError  # PostgresStorageAdapter's

    def _session(self, what: str) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError  # PostgresStorageAdapter's

    def _lock_program(self, conn: psycopg.Connection[Any], program_id: str) -> None:
        raise NotImplementedError  # PostgresStorageAdapter's

    def list_versions(self, program_id: str) -> list[str]:
        raise NotImplementedError  # PostgresStorageAdapter's

    def promote(
        self,
        program_id: str,
        version: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        action: str = "promote",
        served_before: str | None = None,
    ) -> Release:
        """Record that ``version`` is served from now on, and tell every process.

        Args:
            program_id: The program.
            version: The version to serve.
            actor: Who released it.
            reason: Why.
            action: ``promote`` (``rollback`` is :meth:`rollback`'s).
            served_before: The version served until now; recorded first when the program
                was never released, so the first release can be rolled back.

        Raises:
            ProgramNotFoundError: The version is not stored.
            StorageError: PostgreSQL failed or did not answer in time (nothing was released).
        """
        validate_program_id(program_id)
        validate_version(version)
        if action not in ("promote", "rollback"):
            raise ProgramError(f"release action must be 'promote' or 'rollback', not {action!r}")
        with self._session(f"releasing program {program_id!r}") as conn:
            try:
                with conn.transaction():
                    self._lock_program(conn, program_id)
                    if served_before is not None and served_before != version:
                        self._record_first(conn, program_id, validate_version(served_before), actor)
                    return self._record(
                        conn, program_id, version, action, actor=actor, reason=reason
                    )
            except psycopg.errors.ForeignKeyViolation:
                pass  # the version is not stored (the transaction is rolled back)
        known = ", ".join(self.list_versions(program_id)) or "(none)"
        raise ProgramNotFoundError(
            f"program {program_id!r} has no version {version!r} to {action}; "
            f"stored versions: {known}"
        )

    def _record_first(
        self, conn: psycopg.Connection[Any], program_id: str, served: str, actor: str | None
    ) -> None:
        """Record what was served before a program's first release, so it can be rolled back."""
        released = conn.execute(
            self._q("SELECT 1 FROM {schema}.program_releases WHERE program_id = %s LIMIT 1"),
            (program_id,),
        ).fetchone()
        if released is None:
            self._record(
                conn,
                program_id,
                served,
                "promote",
                actor=actor,
                reason="served before the first release",
            )

    def rollback(
        self,
        program_id: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        check: Callable[[str], object] | None = None,
    ) -> Release:
        """Serve again the version released before the current one, and tell every process.

        The target is computed from the history and written in one transaction under the
        program's lock, so concurrent rollbacks take one step back each.

        Args:
            program_id: The program.
            actor: Who rolled back.
            reason: Why.
            check: Called with the target version before it is recorded; raising aborts.

        Raises:
            ProgramError: Nothing was released before the current version.
            StorageError: PostgreSQL failed or did not answer in time (nothing was released).
        """
        validate_program_id(program_id)
        with self._session(f"rolling back program {program_id!r}") as conn, conn.transaction():
            self._lock_program(conn, program_id)
            history = conn.execute(
                self._q(
                    "SELECT action, version FROM {schema}.program_releases "
                    "WHERE program_id = %s ORDER BY id"
                ),
                (program_id,),
            ).fetchall()
            stack = release_stack({"action": a, "version": v} for a, v in history)
            if len(stack) < 2:
                raise ProgramError(
                    f"program {program_id!r}: nothing to roll back to (releases: "
                    f"{', '.join(stack) or 'none'})"
                )
            if check is not None:
                check(stack[-2])
            return self._record(conn, program_id, stack[-2], "rollback", actor=actor, reason=reason)

    def _record(
        self,
        conn: psycopg.Connection[Any],
        program_id: str,
        version: str,
        action: str,
        *,
        actor: str | None,
        reason: str | None,
    ) -> Release:
        row = conn.execute(
            self._q(
                "INSERT INTO {schema}.program_releases "
                "(program_id, version, action, actor, reason) VALUES (%s, %s, %s, %s, %s) "
                "RETURNING id, released_at"
            ),
            (program_id, version, action, actor, reason),
        ).fetchone()
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self.schema}/{program_id}"))
        assert row is not None
        return Release(
            id=row[0],
            program_id=program_id,
            version=version,
            action=action,
            actor=actor,
            reason=reason,
            released_at=row[1].isoformat(),
        )

    def releases(self, program_id: str) -> list[Release]:
        """Every promotion and rollback of the program, oldest first.

        Raises:
            StorageError: PostgreSQL failed or did not answer in time.
        """
        validate_program_id(program_id)
        with self._session(f"reading the releases of {program_id!r}") as conn:
            rows = conn.execute(
                self._q(
                    "SELECT id, version, action, actor, reason, released_at "
                    "FROM {schema}.program_releases WHERE program_id = %s ORDER BY id"
                ),
                (program_id,),
            ).fetchall()
        return [
            Release(
                id=r[0],
                program_id=program_id,
                version=r[1],
                action=r[2],
                actor=r[3],
                reason=r[4],
                released_at=r[5].isoformat(),
            )
            for r in rows
        ]

    def released_version(self, program_id: str) -> str | None:
        """The version released last (``None``: never released).

        Raises:
            StorageError: PostgreSQL failed or did not answer in time.
        """
        validate_program_id(program_id)
        with self._session(f"reading the release of {program_id!r}") as conn:
            row = conn.execute(
                self._q(
                    "SELECT version FROM {schema}.program_releases WHERE program_id = %s "
                    "ORDER BY id DESC LIMIT 1"
                ),
                (program_id,),
            ).fetchone()
        return row[0] if row else None

    def released_versions(self) -> dict[str, str]:
        """The version released last, for every program ever released.

        Raises:
            StorageError: PostgreSQL failed or did not answer in time.
        """
        with self._session("reading the releases") as conn:
            return self._read_released(conn)

    def _read_released(self, conn: psycopg.Connection[Any]) -> dict[str, str]:
        rows = conn.execute(
            self._q(
                "SELECT DISTINCT ON (program_id) program_id, version "
                "FROM {schema}.program_releases ORDER BY program_id, id DESC"
            )
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def watch(self, on_release: Callable[[str, str], None], *, interval_s: float = 1.0) -> None:
        """Call ``on_release(program_id, version)`` with what is released, to serve it.

        A thread LISTENs on :data:`CHANNEL` and, on each notification and every
        ``interval_s`` anyway, reads what is released and calls ``on_release`` for every
        released program: the callback compares with what it serves, and one that raised is
        called again on the next round, until it succeeds. Its reads are bounded by
        ``min(timeout_s, max(2, 3 x interval_s))``; a lost connection is reopened.
        """
        watcher = ReleaseWatcher(
            params={**self._params, "autocommit": True},
            read=self._read_released,
            on_release=on_release,
            interval_s=interval_s,
            timeout_s=min(self._timeout_s, max(2.0, 3 * interval_s)),
            stop=self._stop,
            where=self.display_url,
        )
        self._watchers.append(watcher)
        watcher.start()
