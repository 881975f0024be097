"""A private PostgreSQL server for the program-store tests (never the shared one).

``initdb`` refuses to run as root, so as root the server is set up and run as the
``postgres`` user (``runuser``), in a folder that user owns, on a free loopback port, with
``fsync`` off (a test server); it is stopped and removed when the session ends. Without the
binaries (Debian package ``postgresql``) the tests skip; under ``CI=true`` they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/postgres`` of a server of this session's own."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        message = "PostgreSQL is not installed: apt-get install postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="llm-server-pg-"))
    if as_postgres:
        shutil.chown(folder, user="postgres", group="postgres")
    data, log = folder / "data", folder / "server.log"
    port = _free_port()
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_postgres, pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_schema() -> str:
    """A PostgreSQL schema of this test's own."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def stores(private_postgres: str, pg_schema: str) -> Iterator[Callable[..., Any]]:
    """``stores(cls=PostgresStorageAdapter)``: a new adapter (one "process") on the test's
    schema; every one made gives up the canary guard's lock and is closed at the end."""
    from llm_server.postgres import PostgresStorageAdapter

    made: list[PostgresStorageAdapter] = []

    def make(cls: type[PostgresStorageAdapter] = PostgresStorageAdapter) -> Any:
        store = cls(private_postgres, schema=pg_schema)
        made.append(store)
        return store

    yield make
    for store in made:
        store.release_decider_lock()
        store.close()
