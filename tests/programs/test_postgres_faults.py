"""PostgreSQL under faults: a silent path, a path that resets, a fresh schema opened by several
processes at once. A private server behind the tests' own TCP proxy (``_tcp_proxy``)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import psycopg
import pytest
from _pg_programs import Answer, manager_on, served
from _tcp_proxy import TcpProxy

from llm_server.core.errors import StorageError
from llm_server.postgres import PostgresStorageAdapter

pytestmark = pytest.mark.timeout(180)

WORKER = Path(__file__).with_name("_postgres_worker.py")


@pytest.fixture
def proxy(private_postgres: str) -> Iterator[TcpProxy]:
    port = int(private_postgres.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    made = TcpProxy(port)
    yield made
    made.close()


def test_a_silent_path_fails_within_the_timeout_instead_of_blocking(
    proxy: TcpProxy, private_postgres: str, pg_schema: str
) -> None:
    store = PostgresStorageAdapter(proxy.url(private_postgres), schema=pg_schema, timeout_s=1.5)
    try:
        store.save("p", {"a": 1}, {})
        proxy.set_mode("silent")
        start = time.monotonic()
        with pytest.raises(StorageError, match=r"no answer from PostgreSQL within 1\.5 s"):
            store.list_versions("p")
        assert time.monotonic() - start < 2.5  # before: still blocked after 20 s
        start = time.monotonic()
        with pytest.raises(StorageError, match="no answer"):
            store.load("p", "1.0.0")  # a new connection through the silent path, too
        assert time.monotonic() - start < 2.5
        proxy.set_mode("forward")
        recovered = time.monotonic()
        while True:  # the pool replaces the broken connections: no restart needed
            try:
                assert store.list_versions("p") == ["1.0.0"]
                break
            except StorageError:
                assert time.monotonic() - recovered < 10.0, "the store never recovered"
    finally:
        proxy.set_mode("reset")
        store.close()


# The reset path runs by default; the silent one (each read waits out its timeout, ~5 s) is a
# slow fault run: test_a_silent_path_fails_within_the_timeout_instead_of_blocking keeps a silent
# path in the default suite.
@pytest.mark.parametrize("fault", [pytest.param("silent", marks=pytest.mark.slow), "reset"])
def test_a_replica_converges_on_the_release_made_while_its_path_was_down(
    proxy: TcpProxy,
    private_postgres: str,
    pg_schema: str,
    fault: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="llm_server.postgres")
    publisher_store = PostgresStorageAdapter(private_postgres, schema=pg_schema)
    replica_store = PostgresStorageAdapter(
        proxy.url(private_postgres), schema=pg_schema, timeout_s=2.0
    )
    try:
        publisher, replica = manager_on(publisher_store), manager_on(replica_store)
        replica.follow_releases(interval_s=0.3)
        program = dspy.Predict(Answer)
        program.demos = [dspy.Example(question="q", answer="a").with_inputs("question")]
        new = publisher.save_program_version("answer", program)
        proxy.set_mode(fault)
        publisher.promote("answer", new.version)
        time.sleep(2.5)  # the watcher's reads fail meanwhile
        assert served(replica) == "1.0.0"
        proxy.set_mode("forward")
        start = time.monotonic()
        while served(replica) != new.version:
            assert time.monotonic() - start < 6.0, "the replica did not converge"
            time.sleep(0.05)
        time.sleep(0.5)
        watcher = [r for r in caplog.records if r.name == "llm_server.postgres"]
        lost = [r for r in watcher if "lost PostgreSQL" in r.message]
        assert [r.levelno for r in lost if r.levelno >= logging.WARNING] == [logging.WARNING]
        assert any("is back after" in r.message for r in watcher)
    finally:
        proxy.set_mode("reset")
        replica_store.close()
        publisher_store.close()


@pytest.mark.slow  # four interpreters racing five times; the default suite opens a schema
# twice in one process (test_postgres_store.py, ..._created_once_and_opening_again_...)
def test_a_fresh_schema_opened_by_four_processes_at_once_is_created_once(
    private_postgres: str,
) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), private_postgres, "-", "open", "1", str(index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(4)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        for _ in range(5):
            schema = f"t_{uuid.uuid4().hex[:12]}"
            for worker in workers:  # as close to "at once" as four pipes allow
                assert worker.stdin is not None
                worker.stdin.write(schema + "\n")
                worker.stdin.flush()
            replies = [json.loads(w.stdout.readline()) for w in workers if w.stdout]
            assert all(reply["ok"] for reply in replies), replies
            store = PostgresStorageAdapter(private_postgres, schema=schema)
            store.save("p", {"a": 1}, {})
            store.close()
    finally:
        for worker in workers:
            worker.communicate(timeout=30)  # closes its pipes; end of input ends it


def test_a_saver_stuck_elsewhere_makes_a_save_fail_at_the_lock_timeout_not_block(
    private_postgres: str, pg_schema: str
) -> None:
    store = PostgresStorageAdapter(private_postgres, schema=pg_schema, timeout_s=1.0)
    try:
        with psycopg.connect(private_postgres, autocommit=True) as other:
            other.execute(  # another host's save of the program, holding its lock
                "SELECT pg_advisory_lock(hashtextextended(%s, 0))", (f"llm_server:{pg_schema}:p",)
            )
            start = time.monotonic()
            with pytest.raises(StorageError, match="lock timeout"):
                store.save("p", {"a": 1}, {})
            # the message shows the server's lock_timeout (0.5 s) fired, not the client's 1 s
            assert time.monotonic() - start < 1.5
        assert store.save("p", {"a": 1}, {}).version == "1.0.0"  # nothing was half-written
    finally:
        store.close()
