"""Program versions for a fleet: PostgreSQL storage, releases and rollout to every replica.

Needs the ``postgres`` extra (``pip install "llm-server-framework[postgres]"``: psycopg 3 and
its pool). Select it with ``LLM_SERVER_PROGRAM_STORE=postgresql://user@host:5432/db``, or pass
``PostgresStorageAdapter(url)`` as the storage adapter::

    notebook / job                         every replica
    save_program_version() -> 1.3.0        serves what was released last
    promote("qa", "1.3.0")  ── NOTIFY ──►  switches within ~1 s (re-reads every 1 s too)
    rollback("qa")          ── NOTIFY ──►  back to the release before

Why psycopg 3 and not asyncpg: the storage protocol is synchronous (the program manager runs it
in its worker threads, beside the file-system adapter), and psycopg has a synchronous API, a
pool, and ``LISTEN``/``NOTIFY`` as a generator with a timeout; asyncpg is async only.

The code is in the private module ``_store``: :class:`PostgresStorageAdapter` (versions,
releases, the watcher).
"""

from llm_server.postgres._store import CHANNEL, SCHEMA_VERSION, PostgresStorageAdapter, Release

__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresStorageAdapter", "Release"]
