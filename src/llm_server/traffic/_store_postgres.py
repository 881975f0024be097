"""The fleet's traffic store: PostgreSQL, shared by every replica (private; the postgres extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from llm_server.core.errors import ConfigurationError
from llm_server.core.telemetry._redaction import redact, register_secret
from llm_server.traffic._sql import TABLES, SqlTrafficStore

__all__ = ["PostgresTrafficStore"]


class PostgresTrafficStore(SqlTrafficStore):
    """Captured traffic and feedback in PostgreSQL tables ``<schema>.traffic_*``.

    Used when ``LLM_SERVER_PROGRAM_STORE`` is set (the same database and schema as the program
    versions), so feedback given to any replica finds the execution another one served.

    Args:
        url: ``postgresql://user:password@host:5432/db`` (the password is never shown).
        schema: The schema holding the tables (created if missing).
        max_connections: Size of the connection pool.

    Raises:
        ConfigurationError: The URL is unusable or the server cannot be reached.
    """

    def __init__(self, url: str, *, schema: str = "llm_server", max_connections: int = 4) -> None:
        try:
            import psycopg
            from psycopg import sql
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise ConfigurationError(
                "capturing traffic to PostgreSQL needs the driver: "
                'pip install "llm-server-framework[postgres]"'
            ) from exc
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigurationError("the traffic store URL must start with postgresql://")
        if parts.password:
            register_secret(parts.password)
        if not schema.replace("_", "").isalnum() or not schema.islower():
            raise ConfigurationError(f"invalid PostgreSQL schema name {schema!r}")
        self.schema = schema
        self.display_url = f"postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}"
        self._prefix = f'"{schema}".traffic_'
        self._psycopg = psycopg
        try:
            self._pool = ConnectionPool(
                url,
                min_size=1,
                max_size=max_connections,
                kwargs={"autocommit": True, "connect_timeout": 5},
                open=False,
            )
            self._pool.open(wait=True, timeout=10)
            with self._pool.connection() as conn, conn.transaction():
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
                for statement in TABLES:
                    conn.execute(statement.format(p=self._prefix, n="traffic_"))
        except Exception as exc:
            raise ConfigurationError(
                f"cannot use PostgreSQL at {self.display_url} for traffic: "
                f"{type(exc).__name__}: {redact(str(exc)).strip()}"
            ) from None

    def __repr__(self) -> str:
        return f"PostgresTrafficStore({self.display_url!r}, schema={self.schema!r})"

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            cursor = conn.execute(sql.replace("?", "%s"), tuple(params))
            return [tuple(row) for row in cursor.fetchall()]

    def _change(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        changed = 0
        with self._pool.connection() as conn, conn.transaction():
            for text, params in statements:
                cursor = conn.execute(text.replace("?", "%s"), tuple(params))
                changed += max(cursor.rowcount, 0)
        return changed

    def _insert_many(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            for text, rows in batches:
                if rows:
                    statement = text.replace("?", "%s") + " ON CONFLICT DO NOTHING"
                    cursor.executemany(statement, [tuple(r) for r in rows])

    def close(self) -> None:
        """Close the connection pool."""
        self._pool.close()
