"""Canaries in a real (private) PostgreSQL: the table, one running canary per program, a
promotion recorded as a release in the same transaction, another process following, and the
guard's lock held by one process at a time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import dspy
import pytest
from _pg_programs import Answer, manager_on

from llm_server._cli import main
from llm_server.core.errors import ProgramError, ProgramNotFoundError
from llm_server.models.canary import CanaryGuard
from llm_server.postgres import PostgresStorageAdapter
from llm_server.traffic import Execution, Feedback, PostgresTrafficStore


def tuned() -> Any:
    program = dspy.Predict(Answer)
    program.demos = [dspy.Example(question="q", answer="a").with_inputs("question")]
    return program


def test_no_table_means_no_canaries_and_no_ddl(
    stores: Callable[[], PostgresStorageAdapter],
) -> None:
    store = stores()
    assert store.canaries() == []
    assert store.active_canaries() == {}
    with pytest.raises(ProgramError, match="no running canary"):
        store.end_canary("answer", outcome="rollback", actor=None, reason=None)


def test_a_canary_is_followed_by_another_process_and_a_promotion_is_a_release(
    stores: Callable[[], PostgresStorageAdapter],
) -> None:
    notebook, replica = manager_on(stores()), manager_on(stores())
    try:
        replica.follow_releases(interval_s=0.2)
        new = notebook.save_program_version("answer", tuned()).version
        guard = CanaryGuard(min_requests=10, promote_after_requests=100)
        canary = notebook.start_canary("answer", new, weight=0.25, guard=guard, actor="ana")
        with pytest.raises(ProgramError, match="already has a running canary"):
            notebook.start_canary("answer", new, weight=0.5)
        started = time.monotonic()
        while replica._canary_control.running("answer") is None:
            assert time.monotonic() - started < 2.0
            time.sleep(0.05)
        followed = replica._canary_control.running("answer")
        assert followed is not None
        assert (followed.id, followed.weight, followed.guard) == (canary.id, 0.25, guard)
        ended = notebook.end_canary("answer", "promote", actor="ana", reason="looks good")
        assert (ended.outcome, ended.ended_by, ended.end_reason) == ("promote", "ana", "looks good")
        releases = notebook.releases("answer")
        assert [(r["version"], r["action"]) for r in releases] == [
            ("1.0.0", "promote"),
            (new, "promote"),
        ]
        assert releases[-1]["reason"] == f"canary {canary.id} promoted: looks good"
        ended_at = time.monotonic()
        while (
            replica.registry.get_program_metadata("answer").version != new
            or replica._canary_control.running("answer") is not None
        ):
            assert time.monotonic() - ended_at < 2.0
            time.sleep(0.05)
        assert [c.outcome for c in replica.canaries("answer")] == ["promote"]
    finally:
        notebook.close()
        replica.close()


def test_an_unknown_version_cannot_be_a_canary(
    stores: Callable[[], PostgresStorageAdapter],
) -> None:
    manager = manager_on(stores())
    with pytest.raises(ProgramNotFoundError):
        manager.start_canary("answer", "9.9.9")
    with pytest.raises(ProgramError, match="already serves"):
        manager.start_canary("answer", "1.0.0")


def test_one_process_holds_the_guards_lock_until_it_lets_go(
    stores: Callable[[], PostgresStorageAdapter],
) -> None:
    one, two = stores(), stores()
    assert one.hold_decider_lock()
    assert not two.hold_decider_lock()
    assert one.hold_decider_lock()  # kept
    one.release_decider_lock()  # or its process died: the session ends
    assert two.hold_decider_lock()
    assert not one.hold_decider_lock()


def test_the_decider_is_a_process_that_serves_the_canary_not_the_one_that_started_it(
    stores: Callable[[], PostgresStorageAdapter],
) -> None:
    notebook_store, replica_store = stores(), stores()
    notebook, replica = manager_on(notebook_store), manager_on(replica_store)
    try:
        replica.follow_releases(interval_s=0.2)
        new = notebook.save_program_version("answer", tuned()).version
        canary = notebook.start_canary("answer", new, guard=CanaryGuard(min_requests=500))
        for version in ("1.0.0", new):  # the replica served requests of both versions
            replica.version_stats.record("answer", version, scope=canary.id, latency_s=0.01)
        time.sleep(1.5)  # three guard ticks
        assert getattr(replica_store, "_decider_held", False)
        assert not getattr(notebook_store, "_decider_held", False)
    finally:
        notebook.close()
        replica.close()


@pytest.fixture
def console(
    private_postgres: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The console command's settings: the test's PostgreSQL schema, no Redis."""
    monkeypatch.chdir(tmp_path)  # no .env of the repository's
    monkeypatch.delenv("LLM_SERVER_REDIS_URL", raising=False)
    monkeypatch.setenv("LLM_SERVER_PROGRAM_STORE", private_postgres)
    monkeypatch.setenv("LLM_SERVER_PROGRAM_STORE_SCHEMA", pg_schema)
    monkeypatch.setenv("LLM_PROGRAMS_DIR", str(tmp_path / "programs"))


@pytest.mark.usefixtures("console")
def test_canary_watch_prints_each_sides_feedback_since_the_canary_started(
    private_postgres: str, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = PostgresStorageAdapter(private_postgres, schema=pg_schema)
    notebook = manager_on(store)
    try:
        new = notebook.save_program_version("answer", tuned()).version
        canary = notebook.start_canary("answer", new, weight=0.5, actor="ana")
        assert main(["canary", "watch", "answer"]) == 0
        assert json.loads(capsys.readouterr().out)["feedback"] is None  # no traffic tables
        started = datetime.fromisoformat(canary.started_at).timestamp()
        traffic = PostgresTrafficStore(private_postgres, schema=pg_schema)
        served = [("old", "1.0.0", started - 10)]  # before the canary: not counted
        served += [(f"s{i}", "1.0.0", started + 1) for i in range(3)]
        served += [(f"c{i}", new, started + 1) for i in range(2)]
        traffic.write([Execution(e, "answer", v, None, at) for e, v, at in served], [])
        scores = {"old": 0.0, "s0": 1.0, "s1": 0.5, "s2": None, "c0": 0.1, "c1": 0.3}
        for execution_id, version, at in served:
            score = scores[execution_id]
            traffic.add_feedback(
                Feedback(
                    execution_id,
                    "answer",
                    version,
                    "human",
                    score,
                    None if score is not None else "fine",
                    None,
                    None,
                    at,
                    at + 1,
                )
            )
        traffic.add_feedback(
            Feedback("c0", "answer", new, "judge", 4.0, None, None, None, started + 1, started + 2)
        )
        traffic.close()
        assert main(["canary", "watch", "answer"]) == 0
        report = json.loads(capsys.readouterr().out)
    finally:
        notebook.close()
        store.close()
    assert report["feedback"] == {
        "stable": {
            "version": "1.0.0",
            "human": {"count": 3, "scored": 2, "mean_score": 0.75},
            "judge": {"count": 0, "scored": 0, "mean_score": None},
        },
        "canary": {
            "version": new,
            "human": {"count": 2, "scored": 2, "mean_score": 0.2},
            "judge": {"count": 1, "scored": 1, "mean_score": 4.0},
        },
    }


@pytest.mark.usefixtures("console")
def test_canary_start_takes_the_feedback_thresholds_and_refuses_bad_ones_in_one_line(
    stores: Callable[[], PostgresStorageAdapter], capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = manager_on(stores())
    new = notebook.save_program_version("answer", tuned()).version
    start = ["canary", "start", "answer", new, "--weight", "0.2"]

    assert main([*start, "--max-score-drop", "-0.5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llm-server: canary guard: max_score_drop must be >= 0")
    assert err.count("\n") == 1  # no traceback
    assert stores().canaries("answer") == []

    feedback = ["--max-score-drop", "0.3", "--min-scored-feedback", "40", "--score-kind", "judge"]
    assert main([*start, *feedback]) == 0
    printed = json.loads(capsys.readouterr().out)
    (stored,) = stores().canaries("answer")
    assert stored.guard is not None
    assert (stored.guard.max_score_drop, stored.guard.min_scored_feedback) == (0.3, 40)
    assert stored.guard.score_kind == "judge"
    assert printed["guard"]["max_score_drop"] == 0.3
