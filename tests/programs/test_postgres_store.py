"""Program versions and releases in a real (private) PostgreSQL server."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _pg_programs import Answer, manager_on, with_demo
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg import sql

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import (
    ConfigurationError,
    CorruptProgramError,
    ProgramError,
    ProgramNotFoundError,
    VersionExistsError,
)
from llm_server.fastapi import llm_server_lifespan
from llm_server.postgres import PostgresStorageAdapter
from llm_server.programs._postgres_schema import _STEPS
from llm_server.testing import LocalProvider

WORKER = Path(__file__).with_name("_postgres_worker.py")


def test_versions_round_trip_and_are_immutable(
    stores: Callable[[], PostgresStorageAdapter],
) -> None:
    store = stores()
    first = store.save("p", {"a": 1}, {"notes": "first"})
    second = store.save("p", {"a": 2}, {})
    assert (first.version, second.version) == ("1.0.0", "1.1.0")
    assert store.list_versions("p") == ["1.0.0", "1.1.0"]
    assert store.load("p").state == {"a": 2}
    assert store.load("p", "1.0.0").manifest["notes"] == "first"
    with pytest.raises(VersionExistsError, match="versions are immutable"):
        store.save("p", {"a": 3}, {}, version="1.0.0")
    with pytest.raises(ProgramNotFoundError, match=r"stored versions: 1\.0\.0, 1\.1\.0"):
        store.load("p", "9.0.0")
    with pytest.raises(ProgramError):
        store.save("p", {"a": object()}, {})  # JSON only


def test_a_version_cannot_be_updated_even_by_the_tables_owner(
    stores: Callable[[], PostgresStorageAdapter], private_postgres: str, pg_schema: str
) -> None:
    stores().save("p", {"a": 1}, {})
    with (
        psycopg.connect(private_postgres, autocommit=True) as conn,
        pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"),
    ):
        conn.execute(f'UPDATE "{pg_schema}".program_versions SET state = %s', ('{"a":2}',))


def edit_by_hand(url: str, schema: str, state: str, *, rehash: bool) -> None:
    """What an owner who switches the trigger off can do: rewrite a version's state (and,
    with ``rehash``, both of its sha256 so the unkeyed checks pass)."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(f'ALTER TABLE "{schema}".program_versions DISABLE TRIGGER immutable')
        digest = hashlib.sha256(state.encode()).hexdigest()
        if rehash:
            conn.execute(
                f'UPDATE "{schema}".program_versions SET state = %s, state_sha256 = %s, '
                "manifest = jsonb_set(manifest, '{state_sha256}', to_jsonb(%s::text))",
                (state, digest, digest),
            )
        else:
            conn.execute(f'UPDATE "{schema}".program_versions SET state = %s', (state,))
        conn.execute(f'ALTER TABLE "{schema}".program_versions ENABLE TRIGGER immutable')


def test_a_row_edited_by_hand_is_refused(
    stores: Callable[[], PostgresStorageAdapter], private_postgres: str, pg_schema: str
) -> None:
    store = stores()
    store.save("p", {"a": 1}, {})
    edit_by_hand(private_postgres, pg_schema, '{"a":2}', rehash=False)
    with pytest.raises(CorruptProgramError, match="sha256 does not match"):
        store.load("p", "1.0.0")


def test_the_schema_is_created_once_and_opening_again_changes_nothing(
    stores: Callable[[], PostgresStorageAdapter],
) -> None:
    stores().save("p", {"a": 1}, {})
    assert stores().list_versions("p") == ["1.0.0"]  # a second "process" migrates nothing


def test_an_unreachable_server_fails_startup_clearly_within_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="LLM_SERVER_PROGRAM_STORE: cannot") as caught:
        PostgresStorageAdapter("postgresql://app:s3cret-pw@127.0.0.1:1/db", timeout_s=1.0)
    waited = time.monotonic() - started
    assert 0.9 <= waited < 3.0, f"startup gave up after {waited:.2f} s, not ~timeout_s (1 s)"
    assert "s3cret-pw" not in caught.value.message
    with pytest.raises(ConfigurationError, match="must start with postgresql://"):
        PostgresStorageAdapter("mysql://x@127.0.0.1/db")


def test_a_promotion_reaches_another_process_within_two_seconds_and_rolls_back(
    stores: Callable[[], PostgresStorageAdapter],
) -> None:
    publisher, replica = manager_on(stores()), manager_on(stores())
    assert replica.follow_releases(interval_s=1.0)
    new = publisher.save_program_version("answer", with_demo("v2"), optimizer="manual")
    assert replica.registry.get_program_metadata("answer").version == "1.0.0"  # not promoted
    start = time.monotonic()
    publisher.promote("answer", new.version, actor="ana", reason="better on the devset")
    while replica.registry.get_program_metadata("answer").version != new.version:
        assert time.monotonic() - start < 2.0, "the replica did not switch within 2 s"
        time.sleep(0.02)
    assert replica.get_program("answer").demos[0]["question"] == "v2"
    start = time.monotonic()
    publisher.rollback("answer", actor="ana", reason="regression")
    while replica.registry.get_program_metadata("answer").version != "1.0.0":
        assert time.monotonic() - start < 2.0, "the rollback did not reach the replica in 2 s"
        time.sleep(0.02)
    history = replica.releases("answer")
    assert [(r["version"], r["action"], r["actor"]) for r in history] == [
        ("1.0.0", "promote", "ana"),  # what was served before the first release
        ("1.1.0", "promote", "ana"),
        ("1.0.0", "rollback", "ana"),
    ]
    assert history[1]["reason"] == "better on the devset"
    with pytest.raises(ProgramError, match="nothing to roll back to"):
        publisher.rollback("answer")


def test_a_new_process_serves_the_released_version(
    stores: Callable[[], PostgresStorageAdapter],
) -> None:
    first = manager_on(stores())
    v2 = first.save_program_version("answer", with_demo("v2"))
    first.save_program_version("answer", with_demo("v3"))
    first.promote("answer", v2.version)
    late = manager_on(stores())
    assert late.registry.get_program_metadata("answer").version == v2.version  # not 1.2.0


def test_promoting_a_missing_version_is_refused(
    stores: Callable[[], PostgresStorageAdapter],
) -> None:
    manager = manager_on(stores())
    with pytest.raises(ProgramNotFoundError):
        manager.promote("answer", "7.0.0")
    assert manager.releases("answer") == []


def _workers(url: str, schema: str, mode: str, count: int, processes: int) -> list[Any]:
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), url, schema, mode, str(count), str(index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(processes)
    ]


def test_two_processes_saving_20_versions_each_at_once_lose_nothing(
    stores: Callable[[], PostgresStorageAdapter], private_postgres: str, pg_schema: str
) -> None:
    store = stores()
    workers = _workers(private_postgres, pg_schema, "save", 20, 2)
    versions: list[str] = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        versions += [json.loads(line)["version"] for line in out.splitlines()]
    assert len(versions) == len(set(versions)) == 40
    assert sorted(store.list_versions("p")) == sorted(versions)
    for version in versions:
        store.load("p", version)  # each complete and intact


def test_a_saver_killed_mid_transaction_leaves_no_partial_version(
    stores: Callable[[], PostgresStorageAdapter], private_postgres: str, pg_schema: str
) -> None:
    store = stores()
    store.save("p", {"a": 0}, {})
    (worker,) = _workers(private_postgres, pg_schema, "die-before-commit", 1, 1)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == -9, err  # SIGKILL, after its row was inserted
    assert "inserted" in out
    assert store.list_versions("p") == ["1.0.0"]
    assert store.save("p", {"a": 1}, {}).version == "1.1.0"  # and its lock went with it


DOCS = Path(__file__).parents[2] / "docs" / "how-to" / "programs.md"


def documented_role_sql(role: str, schema: str) -> str:
    """The least-privilege role's SQL exactly as docs/how-to/programs.md shows it."""
    text = DOCS.read_text().split("### A least-privilege role", 1)[1]
    block = text.split("```sql\n", 1)[1].split("```", 1)[0]
    return (
        block.replace("llm_server_app", role)
        .replace("DATABASE llm ", "DATABASE postgres ")
        .replace("SCHEMA llm_server ", f'SCHEMA "{schema}" ')
        .replace("llm_server.", f'"{schema}".')
    )


def test_the_documented_least_privilege_role_starts_serves_and_cannot_update(
    stores: Callable[[], PostgresStorageAdapter], private_postgres: str, pg_schema: str
) -> None:
    owner = manager_on(stores())  # the first start, as the owner, creates the schema
    role = f"app_{pg_schema}"
    with psycopg.connect(private_postgres, autocommit=True) as conn:
        conn.execute(documented_role_sql(role, pg_schema))
    as_role = private_postgres.replace("postgres@", f"{role}@", 1)
    replica_store = PostgresStorageAdapter(as_role, schema=pg_schema)
    try:
        replica = manager_on(replica_store)  # no DDL: starts
        replica.follow_releases(interval_s=0.3)
        tuned = replica.save_program_version("answer", with_demo("v2"))  # INSERT is granted
        owner.promote("answer", tuned.version)
        start = time.monotonic()
        while replica.registry.get_program_metadata("answer").version != tuned.version:
            assert time.monotonic() - start < 2.0
            time.sleep(0.02)
        replica.rollback("answer")
        assert replica.get_program("answer").demos == []
        with psycopg.connect(as_role, autocommit=True) as conn:
            for statement in (
                f'UPDATE "{pg_schema}".program_versions SET state = state',
                f'DELETE FROM "{pg_schema}".program_releases',
                f'CREATE TABLE "{pg_schema}".x (a int)',
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    finally:
        replica_store.close()


def test_a_role_that_may_not_create_a_missing_schema_fails_startup_naming_it(
    private_postgres: str, pg_schema: str
) -> None:
    role = f"app_{pg_schema}"
    with psycopg.connect(private_postgres, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"REVOKE CREATE ON DATABASE postgres FROM {role}")
    as_role = private_postgres.replace("postgres@", f"{role}@", 1)
    with pytest.raises(ConfigurationError, match=f"role '{role}' may not create") as caught:
        PostgresStorageAdapter(as_role, schema=pg_schema)
    assert "least-privilege" in caught.value.message


KEY = "k3y-0f-at-least-16-chars"


def test_without_a_key_an_edit_that_rewrites_the_hashes_passes(
    stores: Callable[[], PostgresStorageAdapter], private_postgres: str, pg_schema: str
) -> None:
    store = stores()
    store.save("p", {"a": 1}, {})
    edit_by_hand(private_postgres, pg_schema, '{"a":2}', rehash=True)
    assert store.load("p", "1.0.0").state == {"a": 2}  # what the key is for


def test_with_a_key_an_edit_that_rewrites_the_hashes_is_refused(
    private_postgres: str, pg_schema: str
) -> None:
    store = PostgresStorageAdapter(private_postgres, schema=pg_schema, key=KEY)
    try:
        store.save("p", {"a": 1}, {"score": 0.1 + 0.2, "notes": "é"})
        assert store.load("p", "1.0.0").state == {"a": 1}  # signed as read back
        edit_by_hand(private_postgres, pg_schema, '{"a":2}', rehash=True)
        with pytest.raises(CorruptProgramError, match="HMAC does not match") as caught:
            store.load("p", "1.0.0")
        assert KEY not in str(caught.value)
    finally:
        store.close()


def test_with_a_key_an_unsigned_version_is_refused_and_a_short_key_is_refused(
    stores: Callable[[], PostgresStorageAdapter], private_postgres: str, pg_schema: str
) -> None:
    stores().save("p", {"a": 1}, {})  # saved without the key
    keyed = PostgresStorageAdapter(private_postgres, schema=pg_schema, key=KEY)
    try:
        with pytest.raises(CorruptProgramError, match="not signed"):
            keyed.load("p", "1.0.0")
    finally:
        keyed.close()
    with pytest.raises(ConfigurationError, match="at least 16 characters") as caught:
        PostgresStorageAdapter(private_postgres, schema=pg_schema, key="short-key1")
    assert "short-key1" not in caught.value.message


def test_a_schema_made_by_the_previous_release_is_upgraded_and_its_versions_still_load(
    stores: Callable[[], PostgresStorageAdapter], private_postgres: str, pg_schema: str
) -> None:
    state = '{"a":1}'
    digest = hashlib.sha256(state.encode()).hexdigest()
    manifest = {
        "format": "llm-server-program/1",
        "program_id": "p",
        "version": "1.0.0",
        "state_sha256": digest,
    }
    with psycopg.connect(private_postgres, autocommit=True) as conn:  # schema version 1
        conn.execute(sql.SQL(_STEPS[1]).format(schema=sql.Identifier(pg_schema)))
        conn.execute(f'INSERT INTO "{pg_schema}".schema_version VALUES (1)')
        conn.execute(
            f'INSERT INTO "{pg_schema}".program_versions '
            "(program_id, version, state, manifest, state_sha256) "
            "VALUES ('p', '1.0.0', %s, %s, %s)",
            (state, json.dumps(manifest), digest),
        )
    store = stores()
    assert store.load("p", "1.0.0").state == {"a": 1}
    with (
        psycopg.connect(private_postgres, autocommit=True) as conn,
        pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"),
    ):
        conn.execute(f'UPDATE "{pg_schema}".program_versions SET state = state')


def test_the_key_and_timeout_settings_reach_the_store_the_lifespan_opens(
    tmp_path: Path, private_postgres: str, pg_schema: str
) -> None:
    with LocalProvider() as provider:
        config = tmp_path / "models.yml"
        config.write_text(
            "models:\n  local:\n    model_name: openai/gpt-4o-mini\n"
            f"    api_base: {provider.openai_api_base}\n"
        )
        settings = FrameworkSettings(
            otel_enabled=False,
            llm_config_path=config,
            program_store=private_postgres,
            program_store_schema=pg_schema,
            program_store_key=KEY,
            program_store_timeout_s=3.0,
        )
        app = FastAPI(lifespan=llm_server_lifespan(programs=[Answer], settings=settings))
        with TestClient(app):  # startup saves the program's first version, signed
            assert app.state.program_manager.storage_adapter.timeout_s == 3.0
    other_key = PostgresStorageAdapter(private_postgres, schema=pg_schema, key="another-key-0123")
    right_key = PostgresStorageAdapter(private_postgres, schema=pg_schema, key=KEY)
    try:
        with pytest.raises(CorruptProgramError, match="HMAC does not match"):
            other_key.load("answer", "1.0.0")
        assert right_key.load("answer", "1.0.0").version == "1.0.0"
    finally:
        other_key.close()
        right_key.close()
