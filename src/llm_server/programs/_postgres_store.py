"""Program versions and releases in PostgreSQL (psycopg 3, a small connection pool)."""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

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
from llm_server.programs._fs_storage import _RESERVED_KEYS, MANIFEST_FORMAT  # one manifest format
from llm_server.programs._postgres_canaries import PostgresCanaries
from llm_server.programs._postgres_connections import (
    DeadlineExceededError,
    bounded,
    connection_settings,
    display_url,
)
from llm_server.programs._postgres_releases import PostgresReleases, Release
from llm_server.programs._postgres_schema import SCHEMA_VERSION, migrate
from llm_server.programs._postgres_signing import check_key, content_mac
from llm_server.programs._postgres_watcher import CHANNEL, ReleaseWatcher
from llm_server.programs._versioning import (
    canonical_json,
    next_version,
    sha256_hex,
    sort_versions,
    validate_program_id,
    validate_version,
)

__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresStorageAdapter", "Release"]


class PostgresStorageAdapter(PostgresReleases, PostgresCanaries):
    """Immutable program versions, and who released which, in PostgreSQL.

    A version is one row (the state as canonical JSON text, hashed; the manifest as JSON),
    inserted in one transaction under a per-program advisory lock, so concurrent savers on
    any number of hosts get distinct versions and a saver killed mid-transaction leaves
    nothing. A trigger refuses any ``UPDATE`` of a version or a release, even by the tables'
    owner. Loading checks the state's sha256, so a row edited by hand is refused; with
    ``key`` (``LLM_SERVER_PROGRAM_STORE_KEY``) each version also carries an HMAC of its
    content, so an edit that rewrites the hashes too is refused. Only JSON is stored:
    loading cannot run code.

    Releases (:meth:`promote`, :meth:`rollback`) are rows of their own, computed and written
    in one transaction under the program's lock and announced with ``NOTIFY``; :meth:`watch`
    listens, so every process serving the program switches within a second (a re-read every
    second is the safety net, and retries what failed).

    No operation waits longer than ``timeout_s``: the server ends slow statements
    (``statement_timeout``, ``lock_timeout``), TCP keepalives and ``tcp_user_timeout`` notice a
    dead peer, and a deadline of the client's own cuts a connection that goes silent.

    Args:
        url: ``postgresql://user:password@host:5432/db?sslmode=verify-full`` (the password is
            never shown; libpq parameters in the URL win over the defaults here).
        schema: The PostgreSQL schema holding the tables (created if missing; no DDL runs
            when it is current, so a role with ``SELECT`` and ``INSERT`` can serve).
        min_connections: Connections kept open.
        max_connections: Connections at most (saves and loads run in worker threads).
        timeout_s: The longest any one operation (including getting a connection) may take.
        key: A secret of at least 16 characters: sign each saved version's content with
            HMAC-SHA256 and refuse to load versions without a valid signature.

    Raises:
        ConfigurationError: The URL or key is unusable, the server refused or cannot be
            reached, or the schema must be created and the role may not.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "llm_server",
        min_connections: int = 1,
        max_connections: int = 4,
        timeout_s: float = 10.0,
        key: str | None = None,
    ) -> None:
        self.display_url = display_url(url)
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(
                f"LLM_SERVER_PROGRAM_STORE: the URL must start with postgresql:// "
                f"(got {self.display_url})"
            )
        if parts.password:
            register_secret(parts.password)
        if not timeout_s > 0:
            raise ConfigurationError(f"timeout_s must be positive, not {timeout_s!r}")
        validate_program_id(schema.replace("-", "_"))
        self.schema = schema
        self._key = check_key(key) if key is not None else None
        self._timeout_s = timeout_s
        self._ident = sql.Identifier(schema)
        try:
            self._params = connection_settings(url, timeout_s=timeout_s)
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"LLM_SERVER_PROGRAM_STORE: unusable URL {self.display_url}: "
                f"{redact(str(exc)).strip()}"
            ) from None
        self._session_deadline = threading.local()
        self._pool = ConnectionPool(
            kwargs={**self._params, "autocommit": True},
            min_size=min_connections,
            max_size=max_connections,
            check=self._check,
            timeout=timeout_s,
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=timeout_s)
            with self._session("preparing the schema") as conn:
                migrate(conn, schema, where=self.display_url)
        except StorageError as exc:
            self._pool.close()
            raise ConfigurationError(
                f"LLM_SERVER_PROGRAM_STORE: cannot use PostgreSQL at {self.display_url}: "
                f"{exc.message}"
            ) from None
        except ConfigurationError:
            self._pool.close()
            raise
        except (psycopg.Error, OSError) as exc:  # psycopg_pool.PoolTimeout included
            self._pool.close()
            raise ConfigurationError(
                f"LLM_SERVER_PROGRAM_STORE: cannot reach PostgreSQL at {self.display_url}: "
                f"{type(exc).__name__}: {redact(str(exc)).strip()}"
            ) from None
        self._watchers: list[ReleaseWatcher] = []
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"PostgresStorageAdapter({self.display_url!r}, schema={self.schema!r})"

    @property
    def timeout_s(self) -> float:
        """The longest any one operation may take, in seconds."""
        return self._timeout_s

    def location(self, program_id: str, version: str) -> str:
        """Where a version lives, for messages (no credentials)."""
        return f"{self.display_url} {self.schema}.program_versions ({program_id}, {version})"

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(schema=self._ident)

    # --- connections -------------------------------------------------------------------------

    def _remaining(self) -> float:
        deadline = getattr(self._session_deadline, "at", None)
        return self._timeout_s if deadline is None else deadline - time.monotonic()

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection before lending it (a dead one is replaced)."""
        with bounded(conn, self._remaining()):
            conn.execute("")

    @contextlib.contextmanager
    def _session(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one operation, all of it within ``timeout_s``.

        Raises:
            StorageError: PostgreSQL failed or did not answer in time (the message names
                ``what`` and the server, never a password).
        """
        outer = getattr(self._session_deadline, "at", None)  # a check() may load a version
        self._session_deadline.at = time.monotonic() + self._timeout_s
        try:
            with (
                self._pool.connection(timeout=self._timeout_s) as conn,
                bounded(conn, self._remaining()),
            ):
                yield conn
        except (DeadlineExceededError, PoolTimeout) as exc:
            raise StorageError(
                f"{what} at {self.display_url}: no answer from PostgreSQL within "
                f"{self._timeout_s:g} s ({redact(str(exc)).strip()})"
            ) from None
        except psycopg.Error as exc:
            raise StorageError(
                f"{what} at {self.display_url} failed: {redact(str(exc)).strip()}"
            ) from None
        finally:
            self._session_deadline.at = outer

    def _lock_program(self, conn: psycopg.Connection[Any], program_id: str) -> None:
        """One saver or releaser per program at a time, on every host (until commit/abort)."""
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"llm_server:{self.schema}:{program_id}",),
        )

    def _mac(self, program_id: str, version: str, state_text: str, manifest: Any) -> str | None:
        if self._key is None:
            return None
        return content_mac(self._key, program_id, version, state_text, manifest)

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
            StorageError: PostgreSQL failed or did not answer in time (nothing was stored).
        """
        validate_program_id(program_id)
        if version is not None:
            validate_version(version)
        if not isinstance(state, Mapping) or not isinstance(manifest, Mapping):
            raise ProgramError("state and manifest must be mappings")
        state_text = canonical_json(dict(state)).decode()
        lineage = {k: v for k, v in manifest.items() if k not in _RESERVED_KEYS}
        canonical_json(lineage)  # refuse unserialisable lineage before touching the database
        with self._session(f"saving program {program_id!r}") as conn, conn.transaction():
            self._lock_program(conn, program_id)
            existing = [
                row[0]
                for row in conn.execute(
                    self._q("SELECT version FROM {schema}.program_versions WHERE program_id = %s"),
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
        return StoredProgram(program_id, chosen, json.loads(state_text), full)

    def _insert(
        self,
        conn: psycopg.Connection[Any],
        program_id: str,
        version: str,
        state_text: str,
        manifest: dict[str, Any],
    ) -> None:
        manifest_text = json.dumps(manifest)
        conn.execute(
            self._q(
                "INSERT INTO {schema}.program_versions (program_id, version, state, manifest, "
                "state_sha256, state_hmac) VALUES (%s, %s, %s, %s, %s, %s)"
            ),
            (
                program_id,
                version,
                state_text,
                manifest_text,
                manifest["state_sha256"],
                # signed as it will be read back (jsonb keeps values, not their spelling)
                self._mac(program_id, version, state_text, json.loads(manifest_text)),
            ),
        )

    def load(self, program_id: str, version: str | None = None) -> StoredProgram:
        """Load a version (the latest when ``version`` is ``None``), its hash checked.

        Raises:
            ProgramNotFoundError: The program or the version does not exist.
            CorruptProgramError: The row was edited (its hash, HMAC or manifest does not
                match), or a key is set and the version carries no signature.
            StorageError: PostgreSQL failed or did not answer in time.
        """
        validate_program_id(program_id)
        if version is None:
            versions = self.list_versions(program_id)
            if not versions:
                raise ProgramNotFoundError(f"program {program_id!r} has no stored versions")
            version = versions[-1]
        validate_version(version)
        with self._session(f"loading program {program_id!r}") as conn:
            row = conn.execute(
                self._q(
                    "SELECT state, manifest, state_sha256, state_hmac "
                    "FROM {schema}.program_versions WHERE program_id = %s AND version = %s"
                ),
                (program_id, version),
            ).fetchone()
        if row is None:
            known = ", ".join(self.list_versions(program_id)) or "(none)"
            raise ProgramNotFoundError(
                f"program {program_id!r} has no version {version!r}; stored versions: {known}"
            )
        state_text, manifest, state_sha, state_mac = row
        where = self.location(program_id, version)
        if not isinstance(manifest, dict):
            raise CorruptProgramError(f"{where}: the manifest is not a JSON object")
        digest = sha256_hex(state_text.encode())
        if digest != state_sha or digest != manifest.get("state_sha256"):
            raise CorruptProgramError(f"{where}: the state's sha256 does not match (edited?)")
        expected_mac = self._mac(program_id, version, state_text, manifest)
        if expected_mac is not None:
            if state_mac is None:
                raise CorruptProgramError(
                    f"{where}: not signed, and LLM_SERVER_PROGRAM_STORE_KEY is set (saved "
                    "without the key, or its signature was removed)"
                )
            if not hmac.compare_digest(expected_mac, state_mac):
                raise CorruptProgramError(
                    f"{where}: the HMAC does not match LLM_SERVER_PROGRAM_STORE_KEY (edited, "
                    "or saved with another key)"
                )
        if manifest.get("program_id") != program_id or manifest.get("version") != version:
            raise CorruptProgramError(f"{where}: the manifest names another program or version")
        try:
            state = json.loads(state_text)
        except ValueError:
            raise CorruptProgramError(f"{where}: the state is not valid JSON") from None
        return StoredProgram(program_id, version, state, manifest)

    def list_versions(self, program_id: str) -> list[str]:
        """The program's versions, oldest first (empty for an unknown program).

        Raises:
            StorageError: PostgreSQL failed or did not answer in time.
        """
        validate_program_id(program_id)
        with self._session(f"listing the versions of {program_id!r}") as conn:
            rows = conn.execute(
                self._q("SELECT version FROM {schema}.program_versions WHERE program_id = %s"),
                (program_id,),
            ).fetchall()
        return sort_versions(row[0] for row in rows)

    def close(self) -> None:
        """Stop watching and close the pool."""
        self._stop.set()
        for watcher in self._watchers:
            watcher.join(timeout=5)
        self._pool.close()
