"""The embedded traffic store: one SQLite file, no server to run (private)."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llm_server.traffic._sql import TABLES, SqlTrafficStore

__all__ = ["SqliteTrafficStore"]

# Parameters per statement: SQLite's own limit (999 before 3.32, 32,766 since), capped so that
# a batch's statement stays a reasonable size
_MAX_PARAMETERS = 32_766
_MAX_ROWS = 256  # rows per statement, at most


def _statements(
    batches: Sequence[tuple[str, Sequence[Sequence[Any]]]], limit: int
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Each batch's rows as ``INSERT OR IGNORE`` statements of a power of two rows each, as
    many as ``limit`` parameters and ``_MAX_ROWS`` allow, largest first.

    So a table's statements take at most nine texts whatever the batch sizes, and each stays
    compiled in the connection's statement cache: a text of its own per batch size (batch sizes
    vary with the traffic) was compiled again each time, its hundreds of placeholders costing
    ~2-5 us per row more (SQLite's CPU per row, 4.3 us in constant batches of 375 rows,
    6.6-9.2 us in batches of 300-450 rows).
    """
    for sql, rows in batches:
        if not rows:
            continue
        head, values = sql.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1).split(" VALUES ", 1)
        most = 1 << (max(1, min(_MAX_ROWS, limit // len(rows[0]))).bit_length() - 1)
        start = 0
        while start < len(rows):
            count = min(most, 1 << ((len(rows) - start).bit_length() - 1))
            chunk = rows[start : start + count]
            start += count
            yield (
                f"{head} VALUES {', '.join([values] * count)}",
                tuple(itertools.chain.from_iterable(chunk)),
            )


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
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return changed

    def _rollback(self) -> None:
        """End a failed transaction (a failed ``COMMIT`` included), so the connection takes
        the next one."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _insert_many(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Many rows per ``INSERT`` statement (:func:`_statements`; a batch of one statement
        runs without ``BEGIN`` and ``COMMIT``: it is atomic alone): each call into SQLite gives
        the interpreter lock away and takes it back, and each take while the event loop runs
        makes the loop switch threads (``executemany``, a take per row, cost the writer thread
        ~3x the CPU; a batch of 375 rows is seven statements)."""
        with self._lock:
            limit = min(_MAX_PARAMETERS, self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
            statements = list(_statements(batches, limit))
            if len(statements) == 1:
                self._db.execute(*statements[0])
                return
            self._db.execute("BEGIN")
            try:
                for statement in statements:
                    self._db.execute(*statement)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
