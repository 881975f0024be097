"""Program versions and releases in PostgreSQL (psycopg 3, a small connection pool)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from llm_server._fs_storage import _RESERVED_KEYS, MANIFEST_FORMAT  # one manifest format
from llm_server.core.errors import (
    ConfigurationError,
    CorruptProgramError,
    ProgramError,
    ProgramNotFoundError,
    StorageError,
    VersionExistsError,
)
from llm_server.core.protocols import StoredProgram
from llm_server.core.telemetry._redaction import redact, register_secret
from llm_server.models._versioning import (
    canonical_json,
    next_version,
    sha256_hex,
    sort_versions,
    validate_program_id,
    validate_version,
)

__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresStorageAdapter", "Release"]

_log = logging.getLogger("llm_server.postgres")

SCHEMA_VERSION: Final = 1
CHANNEL: Final = "llm_server_releases"
"""The NOTIFY channel a promotion or rollback is announced on (payload: schema/program id)."""

_MIGRATION = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.program_versions (
    program_id   text        NOT NULL,
    version      text        NOT NULL,
    state        text        NOT NULL,
    manifest     jsonb       NOT NULL,
    state_sha256 text        NOT NULL,
    saved_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, version)
);
CREATE TABLE IF NOT EXISTS {schema}.program_releases (
    id          bigserial   PRIMARY KEY,
    program_id  text        NOT NULL,
    version     text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('promote', 'rollback')),
    actor       text,
    reason      text,
    released_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (program_id, version) REFERENCES {schema}.program_versions
);
CREATE INDEX IF NOT EXISTS program_releases_by_program
    ON {schema}.program_releases (program_id, id);
CREATE TABLE IF NOT EXISTS {schema}.schema_version (version integer NOT NULL);
"""


class Release(dict[str, Any]):
    """One promotion or rollback: ``id``, ``program_id``, ``version``, ``action``, ``actor``,
    ``reason``, ``released_at`` (ISO-8601 UTC)."""


def _display(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    except ValueError:
        return "<unparseable URL>"


class PostgresStorageAdapter:
    """Immutable program versions, and who released which, in PostgreSQL.

    A version is one row (the state as canonical JSON text, hashed; the manifest as JSON),
    inserted in one transaction under a per-program advisory lock, so concurrent savers on
    any number of hosts get distinct versions and a saver killed mid-transaction leaves
    nothing. The primary key makes versions immutable; the library never updates a row.
    Loading checks the state's sha256, so a row edited by hand is refused. Only JSON is
    stored: loading cannot run code.

    Releases (:meth:`promote`, :meth:`rollback`) are rows of their own, each announced with
    ``NOTIFY`` in its transaction; :meth:`watch` listens, so every process serving the
    program switches within a second (a re-read every second is the safety net).

    Args:
        url: ``postgresql://user:password@host:5432/db`` (the password is never shown).
        schema: The PostgreSQL schema holding the tables (created if missing).
        min_connections: Connections kept open.
        max_connections: Connections at most (saves and loads run in worker threads).

    Raises:
        ConfigurationError: The URL is unusable, or the server refused or cannot be reached.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "llm_server",
        min_connections: int = 1,
        max_connections: int = 4,
    ) -> None:
        self.display_url = _display(url)
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(
                f"LLM_SERVER_PROGRAM_STORE: the URL must start with postgresql:// "
                f"(got {self.display_url})"
            )
        if parts.password:
            register_secret(parts.password)
        validate_program_id(schema.replace("-", "_"))
        self.schema = schema
        self._url = url
        self._ident = sql.Identifier(schema)
        try:
            self._pool = ConnectionPool(
                url,
                min_size=min_connections,
                max_size=max_connections,
                kwargs={"autocommit": True, "connect_timeout": 5},
                open=False,
            )
            self._pool.open(wait=True, timeout=10)
        except (psycopg.Error, OSError) as exc:
            raise ConfigurationError(
                f"LLM_SERVER_PROGRAM_STORE: cannot use PostgreSQL at {self.display_url}: "
                f"{redact(str(exc)).strip()}"
            ) from None
        except Exception as exc:  # psycopg_pool.PoolTimeout
            raise ConfigurationError(
                f"LLM_SERVER_PROGRAM_STORE: cannot reach PostgreSQL at {self.display_url}: "
                f"{type(exc).__name__}: {redact(str(exc)).strip()}"
            ) from None
        self._migrate()
        self._watchers: list[threading.Thread] = []
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"PostgresStorageAdapter({self.display_url!r}, schema={self.schema!r})"

    def location(self, program_id: str, version: str) -> str:
        """Where a version lives, for messages (no credentials)."""
        return f"{self.display_url} {self.schema}.program_versions ({program_id}, {version})"

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(schema=self._ident)

    def _migrate(self) -> None:
        """Create or upgrade the tables, once, in one transaction (idempotent)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('llm_server:migrate', 0))")
            conn.execute(self._q(_MIGRATION))
            row = conn.execute(
                self._q("SELECT max(version) FROM {schema}.schema_version")
            ).fetchone()
            if row is None or row[0] is None:
                conn.execute(
                    self._q("INSERT INTO {schema}.schema_version VALUES (%s)"), (SCHEMA_VERSION,)
                )
            elif row[0] > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"PostgreSQL schema {self.schema!r} is at version {row[0]}, newer than this "
                    f"library's {SCHEMA_VERSION}: upgrade llm-server"
                )

    # --- the StorageAdapter protocol ---------------------------------------------------------

    def save(
        self,
        program_id: str,
        state: Mapping[str, Any],
        manifest: Mapping[str, Any],
        *,
        version: str | None = None,
    ) -> StoredProgram:
        """Store a new immutable version (the next MINOR unless ``version`` is given).

        Raises:
            VersionExistsError: The explicit ``version`` exists.
            ProgramError: ``state`` or ``manifest`` is not JSON-serialisable.
            StorageError: PostgreSQL failed (nothing was stored).
        """
        validate_program_id(program_id)
        if version is not None:
            validate_version(version)
        if not isinstance(state, Mapping) or not isinstance(manifest, Mapping):
            raise ProgramError("state and manifest must be mappings")
        state_text = canonical_json(dict(state)).decode()
        lineage = {k: v for k, v in manifest.items() if k not in _RESERVED_KEYS}
        canonical_json(lineage)  # refuse unserialisable lineage before touching the database
        try:
            with self._pool.connection() as conn, conn.transaction():
                # one saver per program at a time, on every host; released at commit or abort
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (f"llm_server:{self.schema}:{program_id}",),
                )
                existing = [
                    row[0]
                    for row in conn.execute(
                        self._q(
                            "SELECT version FROM {schema}.program_versions WHERE program_id = %s"
                        ),
                        (program_id,),
                    )
                ]
                if version is not None and version in existing:
                    raise VersionExistsError(
                        f"program {program_id!r} already has version {version!r} in "
                        f"{self.display_url}; versions are immutable"
                    )
                chosen = version or next_version(existing)
                full = {
                    **lineage,
                    "format": MANIFEST_FORMAT,
                    "program_id": program_id,
                    "version": chosen,
                    "state_sha256": sha256_hex(state_text.encode()),
                    "state_bytes": len(state_text.encode()),
                }
                self._insert(conn, program_id, chosen, state_text, full)
        except psycopg.Error as exc:
            raise StorageError(
                f"saving program {program_id!r} to {self.display_url} failed: "
                f"{redact(str(exc)).strip()}"
            ) from None
        return StoredProgram(program_id, chosen, json.loads(state_text), full)

    def _insert(
        self,
        conn: psycopg.Connection[Any],
        program_id: str,
        version: str,
        state_text: str,
        manifest: dict[str, Any],
    ) -> None:
        conn.execute(
            self._q(
                "INSERT INTO {schema}.program_versions "
                "(program_id, version, state, manifest, state_sha256) VALUES (%s, %s, %s, %s, %s)"
            ),
            (program_id, version, state_text, json.dumps(manifest), manifest["state_sha256"]),
        )

    def load(self, program_id: str, version: str | None = None) -> StoredProgram:
        """Load a version (the latest when ``version`` is ``None``), its hash checked.

        Raises:
            ProgramNotFoundError: The program or the version does not exist.
            CorruptProgramError: The row was edited (its hash or manifest does not match).
            StorageError: PostgreSQL failed.
        """
        validate_program_id(program_id)
        if version is None:
            versions = self.list_versions(program_id)
            if not versions:
                raise ProgramNotFoundError(f"program {program_id!r} has no stored versions")
            version = versions[-1]
        validate_version(version)
        try:
            with self._pool.connection() as conn:
                row = conn.execute(
                    self._q(
                        "SELECT state, manifest, state_sha256 FROM {schema}.program_versions "
                        "WHERE program_id = %s AND version = %s"
                    ),
                    (program_id, version),
                ).fetchone()
        except psycopg.Error as exc:
            raise StorageError(
                f"loading program {program_id!r} from {self.display_url} failed: "
                f"{redact(str(exc)).strip()}"
            ) from None
        if row is None:
            known = ", ".join(self.list_versions(program_id)) or "(none)"
            raise ProgramNotFoundError(
                f"program {program_id!r} has no version {version!r}; stored versions: {known}"
            )
        state_text, manifest, state_sha = row
        where = self.location(program_id, version)
        if not isinstance(manifest, dict):
            raise CorruptProgramError(f"{where}: the manifest is not a JSON object")
        digest = sha256_hex(state_text.encode())
        if digest != state_sha or digest != manifest.get("state_sha256"):
            raise CorruptProgramError(f"{where}: the state's sha256 does not match (edited?)")
        if manifest.get("program_id") != program_id or manifest.get("version") != version:
            raise CorruptProgramError(f"{where}: the manifest names another program or version")
        try:
            state = json.loads(state_text)
        except ValueError:
            raise CorruptProgramError(f"{where}: the state is not valid JSON") from None
        return StoredProgram(program_id, version, state, manifest)

    def list_versions(self, program_id: str) -> list[str]:
        """The program's versions, oldest first (empty for an unknown program)."""
        validate_program_id(program_id)
        with self._pool.connection() as conn:
            rows = conn.execute(
                self._q("SELECT version FROM {schema}.program_versions WHERE program_id = %s"),
                (program_id,),
            ).fetchall()
        return sort_versions(row[0] for row in rows)

    # --- releases ----------------------------------------------------------------------------

    def promote(
        self,
        program_id: str,
        version: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        action: str = "promote",
    ) -> Release:
        """Record that ``version`` is served from now on, and tell every process.

        Raises:
            ProgramNotFoundError: The version is not stored.
        """
        validate_program_id(program_id)
        validate_version(version)
        try:
            with self._pool.connection() as conn, conn.transaction():
                row = conn.execute(
                    self._q(
                        "INSERT INTO {schema}.program_releases "
                        "(program_id, version, action, actor, reason) VALUES (%s, %s, %s, %s, %s) "
                        "RETURNING id, released_at"
                    ),
                    (program_id, version, action, actor, reason),
                ).fetchone()
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self.schema}/{program_id}"))
        except psycopg.errors.ForeignKeyViolation:
            known = ", ".join(self.list_versions(program_id)) or "(none)"
            raise ProgramNotFoundError(
                f"program {program_id!r} has no version {version!r} to {action}; "
                f"stored versions: {known}"
            ) from None
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
        """Every promotion and rollback of the program, oldest first."""
        validate_program_id(program_id)
        with self._pool.connection() as conn:
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
        """The version promoted last (``None``: never promoted)."""
        validate_program_id(program_id)
        with self._pool.connection() as conn:
            row = conn.execute(
                self._q(
                    "SELECT version FROM {schema}.program_releases WHERE program_id = %s "
                    "ORDER BY id DESC LIMIT 1"
                ),
                (program_id,),
            ).fetchone()
        return row[0] if row else None

    def released_versions(self) -> dict[str, str]:
        """The version promoted last, for every program ever promoted."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                self._q(
                    "SELECT DISTINCT ON (program_id) program_id, version "
                    "FROM {schema}.program_releases ORDER BY program_id, id DESC"
                )
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def watch(self, on_release: Callable[[str, str], None], *, interval_s: float = 1.0) -> None:
        """Call ``on_release(program_id, version)`` when a release changes what to serve.

        A thread LISTENs on :data:`CHANNEL` and also re-reads every ``interval_s`` (a lost
        notification, a restarted server), so a change is seen within about a second.
        """
        thread = threading.Thread(
            target=self._watch,
            args=(on_release, interval_s),
            name="llm-server-releases",
            daemon=True,
        )
        self._watchers.append(thread)
        thread.start()

    def _watch(self, on_release: Callable[[str, str], None], interval_s: float) -> None:
        seen: dict[str, str] = {}

        def sync() -> None:
            for program_id, version in self.released_versions().items():
                if seen.get(program_id) != version:
                    seen[program_id] = version
                    try:
                        on_release(program_id, version)
                    except Exception:
                        _log.exception("applying release %s %s failed", program_id, version)

        while not self._stop.is_set():
            try:
                with psycopg.Connection.connect(
                    self._url, autocommit=True, connect_timeout=5
                ) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    sync()
                    while not self._stop.is_set():
                        # a notification ends the wait early; either way, read what is released
                        for _ in conn.notifies(timeout=interval_s, stop_after=1):
                            pass
                        sync()
            except (psycopg.Error, OSError) as exc:
                _log.warning(
                    "program releases: lost PostgreSQL at %s (%s); retrying",
                    self.display_url,
                    redact(str(exc)).strip(),
                )
                self._stop.wait(interval_s)

    def close(self) -> None:
        """Stop watching and close the pool."""
        self._stop.set()
        for thread in self._watchers:
            thread.join(timeout=5)
        self._pool.close()
