"""A separate process that saves program versions into PostgreSQL, for the fleet tests.

Usage::

    python _postgres_worker.py URL SCHEMA MODE COUNT WRITER

MODE ``save``: save COUNT versions from COUNT threads at once, printing each assigned version
as a JSON line. MODE ``die-before-commit``: start one save, and SIGKILL itself once its row is
inserted, before the transaction commits. MODE ``open``: print ``ready``, then for each schema
name read from stdin open an adapter on it at once and print ``ok`` or the error, as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llm_server.postgres import PostgresStorageAdapter


def main() -> None:
    url, schema, mode, count, writer = sys.argv[1:6]
    if mode == "open":
        print("ready", flush=True)
        for line in sys.stdin:
            try:
                PostgresStorageAdapter(url, schema=line.strip()).close()
                print(json.dumps({"ok": True}), flush=True)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                print(json.dumps({"ok": False, "error": error}), flush=True)
        return
    store = PostgresStorageAdapter(url, schema=schema, max_connections=int(count))
    if mode == "die-before-commit":
        real_insert = store._insert

        def insert_then_die(*args: Any) -> None:
            real_insert(*args)
            print("inserted", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        store._insert = insert_then_die  # type: ignore[method-assign]

    def save(index: int) -> str:
        return store.save("p", {"writer": writer, "index": index}, {}).version

    with ThreadPoolExecutor(max_workers=int(count)) as pool:
        for version in pool.map(save, range(int(count))):
            print(json.dumps({"version": version}), flush=True)
    store.close()


if __name__ == "__main__":
    main()
