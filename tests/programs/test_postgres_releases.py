"""Releases in a real (private) PostgreSQL: each path that carries a release to a replica is
tested on its own (the announcement, the periodic re-read, the retry after a failure), and
rollbacks are tested with three releases and with two at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from _pg_programs import manager_on, served, with_demo

from llm_server.core.errors import ProgramError, StorageError
from llm_server.core.protocols import StoredProgram
from llm_server.models.program_manager import ProgramManager
from llm_server.postgres import PostgresStorageAdapter

pytestmark = pytest.mark.timeout(120)


def wait_until_served(manager: ProgramManager, version: str, within_s: float) -> float:
    """Seconds until ``manager`` serves ``version``; fails after ``within_s``."""
    start = time.monotonic()
    while served(manager) != version:
        assert time.monotonic() - start < within_s, f"still serving {served(manager)}"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_promotion_is_announced_a_replica_reading_every_30_s_switches_within_2_s(
    stores: Callable[..., Any],
) -> None:
    publisher, replica = manager_on(stores()), manager_on(stores())
    assert replica.follow_releases(interval_s=30.0)  # only the announcement can be in time
    new = publisher.save_program_version("answer", with_demo("v2"))
    time.sleep(0.3)  # the watcher listens
    publisher.promote("answer", new.version)
    wait_until_served(replica, new.version, within_s=2.0)
    publisher.rollback("answer")
    wait_until_served(replica, "1.0.0", within_s=2.0)


def test_a_release_nobody_announced_is_served_after_the_next_read(
    stores: Callable[..., Any], private_postgres: str, pg_schema: str
) -> None:
    publisher, replica = manager_on(stores()), manager_on(stores())
    versions = [publisher.save_program_version("answer", with_demo(f"v{n}")) for n in (2, 3)]
    assert replica.follow_releases(interval_s=0.3)
    # the second release comes after the replica served the first, so after a read of its
    # watcher: only a later read, not the first one, can carry it
    for new in versions:
        with psycopg.connect(private_postgres, autocommit=True) as conn:  # no NOTIFY
            conn.execute(
                f'INSERT INTO "{pg_schema}".program_releases (program_id, version, action) '
                "VALUES ('answer', %s, 'promote')",
                (new.version,),
            )
        wait_until_served(replica, new.version, within_s=1.5)


class FailsOnce(PostgresStorageAdapter):
    """Loading version 1.1.0 fails the first time (a transient error), then works."""

    attempts = 0

    def load(self, program_id: str, version: str | None = None) -> StoredProgram:
        if version == "1.1.0":
            type(self).attempts += 1
            if type(self).attempts == 1:
                raise StorageError("loading program 'answer': connection reset (injected)")
        return super().load(program_id, version)


def test_a_replica_whose_switch_failed_converges_on_the_next_read(
    stores: Callable[..., Any],
) -> None:
    publisher, replica = manager_on(stores()), manager_on(stores(FailsOnce))
    assert replica.follow_releases(interval_s=0.3)
    new = publisher.save_program_version("answer", with_demo("v2"))
    publisher.promote("answer", new.version)
    wait_until_served(replica, new.version, within_s=2.0)
    assert FailsOnce.attempts == 2


def test_a_rollback_after_three_releases_returns_to_the_previous_one_each_time(
    stores: Callable[..., Any],
) -> None:
    manager = manager_on(stores())
    b = manager.save_program_version("answer", with_demo("b")).version
    c = manager.save_program_version("answer", with_demo("c")).version
    manager.promote("answer", b)  # records 1.0.0 (served before) then 1.1.0
    manager.promote("answer", c)
    assert manager.rollback("answer").version == b
    assert served(manager) == b
    assert manager.rollback("answer").version == "1.0.0"
    with pytest.raises(ProgramError, match="nothing to roll back to"):
        manager.rollback("answer")
    assert [r["version"] for r in manager.releases("answer")] == ["1.0.0", b, c, b, "1.0.0"]


def waiting_for_locks(url: str, count: int) -> None:
    """Until ``count`` sessions wait for a lock (each rollback reached its database step)."""
    start = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
            if row is not None and row[0] >= count:
                return
            assert time.monotonic() - start < 10, "the rollbacks never reached the database"
            time.sleep(0.02)


def test_two_rollbacks_at_once_take_two_steps_and_the_history_matches_what_is_served(
    stores: Callable[..., Any], private_postgres: str, pg_schema: str
) -> None:
    publisher = manager_on(stores())
    b = publisher.save_program_version("answer", with_demo("b")).version
    c = publisher.save_program_version("answer", with_demo("c")).version
    publisher.promote("answer", b)
    publisher.promote("answer", c)
    one, two, replica = manager_on(stores()), manager_on(stores()), manager_on(stores())
    replica.follow_releases(interval_s=0.3)
    wait_until_served(replica, c, within_s=2.0)
    results: list[str] = []
    with psycopg.connect(private_postgres) as blocker:
        # hold back every release write, so both rollbacks read the history before either
        # writes unless something orders them
        blocker.execute(f'LOCK TABLE "{pg_schema}".program_releases IN EXCLUSIVE MODE')
        threads = [
            threading.Thread(target=lambda m=m: results.append(m.rollback("answer").version))
            for m in (one, two)
        ]
        for thread in threads:
            thread.start()
        waiting_for_locks(private_postgres, 2)
        blocker.rollback()  # let them write
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(results) == sorted([b, "1.0.0"])  # one step each, not the same step twice
    history = publisher.releases("answer")
    assert [r["version"] for r in history] == ["1.0.0", b, c, b, "1.0.0"]
    wait_until_served(replica, "1.0.0", within_s=2.0)
    with pytest.raises(ProgramError, match="nothing to roll back to"):
        publisher.rollback("answer")


class PromotesLate(PostgresStorageAdapter):
    """A promotion whose caller resumes late: right after its row is written, another
    process promotes a newer version, and this process's watcher applies it."""

    def promote(self, program_id: str, version: str, **kwargs: Any) -> Any:
        release = super().promote(program_id, version, **kwargs)
        if version == "1.1.0":
            self.meanwhile()
        return release

    def meanwhile(self) -> None:
        raise NotImplementedError


def test_a_promotion_returning_late_does_not_put_back_an_older_version(
    stores: Callable[..., Any],
) -> None:
    other = manager_on(stores())
    b = other.save_program_version("answer", with_demo("b")).version
    c = other.save_program_version("answer", with_demo("c")).version
    store: PromotesLate = stores(PromotesLate)
    slow = manager_on(store)
    slow.follow_releases(interval_s=30.0)  # announcements only: no periodic repair
    time.sleep(0.3)

    def meanwhile() -> None:
        other.promote("answer", c)
        wait_until_served(slow, c, within_s=2.0)  # the watcher applied the newer release

    store.meanwhile = meanwhile  # type: ignore[method-assign]
    slow.promote("answer", b)
    assert served(slow) == c  # what is released last, not what this call released
    time.sleep(0.5)
    assert served(slow) == c
