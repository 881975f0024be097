"""The embedded traffic store: one SQLite file, no server to run (private)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_server.traffic._sql import TABLES, SqlTrafficStore

__all__ = ["SqliteTrafficStore"]


class SqliteTrafficStore(SqlTrafficStore):
    """Captured traffic and feedback in one SQLite file (single process).

    The connection is shared by the recorder's writer thread and the worker threads that read
    (a lock serializes them); the file runs in WAL mode.

    Args:
        path: The database file (created with its folder), or ``":memory:"``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            for statement in TABLES:
                self._db.execute(statement.format(p="", n=""))

    def __repr__(self) -> str:
        return f"SqliteTrafficStore({self.path!r})"

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, tuple(params)).fetchall())

    def _change(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        changed = 0
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for sql, params in statements:
                    changed += self._db.execute(sql, tuple(params)).rowcount
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return changed

    def _insert_many(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for sql, rows in batches:
                    if rows:
                        ignoring = sql.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)
                        self._db.executemany(ignoring, [tuple(r) for r in rows])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
