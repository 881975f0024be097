"""The tables, and their migration: DDL only when the schema is missing or older.

A process whose schema is current runs no DDL at all, so the serving role needs no more than
``SELECT`` and ``INSERT`` (docs/how-to/programs.md shows the role). Creating or upgrading runs
in one transaction under an advisory lock, so several processes starting on a fresh database
at once create the tables once.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import sql

from llm_server.core.errors import ConfigurationError

__all__ = ["SCHEMA_VERSION", "migrate"]

SCHEMA_VERSION: Final = 2

_STEPS: Final[dict[int, str]] = {
    1: """
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
""",
    # 2: versions and releases cannot be updated, even by the tables' owner (a trigger), and a
    # version may carry an HMAC of its content (LLM_SERVER_PROGRAM_STORE_KEY).
    2: """
ALTER TABLE {schema}.program_versions ADD COLUMN IF NOT EXISTS state_hmac text;
CREATE OR REPLACE FUNCTION {schema}.refuse_update() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'llm-server: % rows are immutable (insert a new version or release)',
        TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END
$$;
DROP TRIGGER IF EXISTS immutable ON {schema}.program_versions;
CREATE TRIGGER immutable BEFORE UPDATE ON {schema}.program_versions
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_update();
DROP TRIGGER IF EXISTS immutable ON {schema}.program_releases;
CREATE TRIGGER immutable BEFORE UPDATE ON {schema}.program_releases
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_update();
""",
}


def installed_version(conn: psycopg.Connection[Any], schema: str) -> int | None:
    """The schema's version (``None``: no tables yet); reads only."""
    table = sql.Identifier(schema, "schema_version").as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    if row is None or row[0] is None:
        return None
    found = conn.execute(
        sql.SQL("SELECT max(version) FROM {}").format(sql.Identifier(schema, "schema_version"))
    ).fetchone()
    return None if found is None or found[0] is None else int(found[0])


def migrate(conn: psycopg.Connection[Any], schema: str, *, where: str) -> None:
    """Bring ``schema`` to :data:`SCHEMA_VERSION`; no DDL when it is there already.

    Raises:
        ConfigurationError: The schema is newer than this library, or it must be created or
            upgraded and the role may not (the message says what to run and as whom).
    """
    version = installed_version(conn, schema)
    if version == SCHEMA_VERSION:
        return
    _check_not_newer(version, schema)
    ident = sql.Identifier(schema)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('llm_server:migrate', 0))")
            version = installed_version(conn, schema)  # another process may have done it
            _check_not_newer(version, schema)
            for step in range((version or 0) + 1, SCHEMA_VERSION + 1):
                conn.execute(sql.SQL(_STEPS[step]).format(schema=ident))
                conn.execute(
                    sql.SQL("INSERT INTO {}.schema_version VALUES (%s)").format(ident), (step,)
                )
    except psycopg.errors.InsufficientPrivilege:
        current = conn.execute("SELECT current_user").fetchone()
        role = current[0] if current else "?"
        state = "does not exist" if version is None else f"is at version {version}"
        raise ConfigurationError(
            f"LLM_SERVER_PROGRAM_STORE: the PostgreSQL schema {schema!r} at {where} {state} "
            f"and role {role!r} may not create or upgrade it to version {SCHEMA_VERSION}: "
            "start once with the schema's owner (or a role allowed to CREATE in the database), "
            "then serve with the least-privilege role (docs/how-to/programs.md)"
        ) from None


def _check_not_newer(version: int | None, schema: str) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"PostgreSQL schema {schema!r} is at version {version}, newer than this "
            f"library's {SCHEMA_VERSION}: upgrade llm-server"
        )
