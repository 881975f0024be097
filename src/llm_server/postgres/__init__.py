"""Program versions for a fleet: PostgreSQL storage, releases and rollout to every replica.

Needs the ``postgres`` extra (``pip install "llm-server-framework[postgres]"``: psycopg 3 and
its pool). Select it with ``LLM_SERVER_PROGRAM_STORE=postgresql://user@host:5432/db``, or pass
``PostgresStorageAdapter(url)`` as the storage adapter::

    notebook / job                         every replica
    save_program_version() -> 1.3.0        serves what was released last
    promote("qa", "1.3.0")  ── NOTIFY ──►  switches within ~1 s
    rollback("qa")          ── NOTIFY ──►  back to the release before
                                           (each replica also compares what it serves with
                                           what is released every 1 s, and retries a switch
                                           that failed)

Why psycopg 3 and not asyncpg: the storage protocol is synchronous (the program manager runs it
in its worker threads, beside the file-system adapter), and psycopg has a synchronous API, a
pool, and ``LISTEN``/``NOTIFY`` as a generator with a timeout; asyncpg is async only.

The package holds ``_store`` (:class:`PostgresStorageAdapter`: versions and releases),
``_watcher`` (the thread that keeps what a process serves equal to what is released),
``_schema`` (the tables; DDL only when missing or older), ``_connections`` (timeouts and the
client's own deadline, so no call blocks on a silent path) and ``_signing`` (the optional
keyed content hash).
"""

from llm_server.postgres._store import CHANNEL, SCHEMA_VERSION, PostgresStorageAdapter, Release

__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresStorageAdapter", "Release"]
