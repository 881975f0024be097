"""Capture and online evaluation at their edges: shutdown while work is in flight, a record the
store refuses, a failed commit, a second event loop, options replaced while a judge runs."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _traffic_helpers import build_app

from llm_server.core.errors import ExecutionNotFoundError
from llm_server.testing import LocalProvider
from llm_server.traffic import (
    CaptureOptions,
    Execution,
    Feedback,
    OnlineEvaluation,
    SqliteTrafficStore,
    TrafficRecorder,
)


def _serve(recorder: TrafficRecorder, execution_id: str, question: Any = None) -> None:
    envelope = {
        "data": {"answer": f"answer {execution_id}"},
        "metadata": {"execution_id": execution_id, "program": {"version": "1.0.0"}},
    }
    recorder.served("answer", {"question": question or f"q {execution_id}"}, envelope)


def _score(inputs: Any, outputs: Any) -> float:
    return 1.0


def test_close_writes_the_capture_the_loop_is_converting(tmp_path: Path) -> None:
    """aclose() runs close() in a thread while the loop converts: the writer's last look must
    not find both queues empty while the loop holds an item it took off the first one."""
    in_hook = threading.Event()

    def slow_hook(record: dict[str, Any]) -> dict[str, Any]:
        in_hook.set()
        time.sleep(0.3)  # widens the window (without a hook it is one conversion, ~10 us)
        return record

    store = SqliteTrafficStore(tmp_path / "t.sqlite3")
    recorder = TrafficRecorder(store, flush_interval_s=30)
    recorder.enable("answer", CaptureOptions(redact=slow_hook))

    async def main() -> None:
        _serve(recorder, "e1")

        def closer() -> None:
            assert in_hook.wait(5)
            recorder.close()

        await asyncio.get_running_loop().run_in_executor(None, closer)

    asyncio.run(main())
    reopened = SqliteTrafficStore(store.path)
    try:
        assert reopened.find_execution("e1") is not None
    finally:
        reopened.close()
    assert recorder.dropped == 0


def test_aclose_does_not_restart_the_judge_it_stopped(tmp_path: Path) -> None:
    """close() hands the last written captures to their judge: after aclose() stopped it they
    are skipped and counted, never scored against a closed store or model stack."""
    calls: list[float] = []

    def metric(inputs: Any, outputs: Any) -> float:
        calls.append(time.monotonic())
        return 1.0

    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=30)
    recorder.enable("answer", CaptureOptions(evaluation=OnlineEvaluation(metric=metric)))

    async def main() -> float:
        for i in range(3):
            _serve(recorder, f"e{i}")
        await recorder.aclose()
        closed_at = time.monotonic()
        await asyncio.sleep(0.5)  # time for a restarted worker to score
        return closed_at

    closed_at = asyncio.run(main())
    assert [c for c in calls if c > closed_at] == []
    assert recorder._evaluators["answer"]._task is None
    assert recorder.evaluation_counts("answer") == {"scored": 0, "skipped": 3, "skipped_busy": 0}


def test_the_judge_and_aflush_work_on_a_second_event_loop(tmp_path: Path) -> None:
    """One recorder, two event loops one after the other (two lifespans, or one loop per
    test): the evaluation's queue and worker follow the loop that serves."""
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=0.01)
    evaluation = OnlineEvaluation(metric=_score, spacing_s=0)
    recorder.enable("answer", CaptureOptions(evaluation=evaluation))

    async def round_(prefix: str) -> bool:
        for i in range(3):
            _serve(recorder, f"{prefix}{i}")
        return await recorder.aflush(10)

    try:
        assert asyncio.run(round_("a"))
        assert recorder.evaluation_counts("answer")["scored"] == 3
        assert asyncio.run(round_("b"))
        assert recorder.evaluation_counts("answer")["scored"] == 6
    finally:
        recorder.close()


def test_served_after_close_is_dropped_and_counted_and_flush_does_not_wait(
    tmp_path: Path,
) -> None:
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"))
    recorder.enable("answer", CaptureOptions())
    recorder.close()
    _serve(recorder, "late")  # a request finishing during shutdown
    started = time.monotonic()
    assert recorder.flush(5)  # nothing queued: the late one was dropped
    assert time.monotonic() - started < 1
    assert recorder.dropped == 1
    with pytest.raises(RuntimeError, match="closed"):
        recorder.forget("acme")


class _PickyStore(SqliteTrafficStore):
    """Refuses a batch holding the execution ``bad`` (as a store refuses a record's data), or
    every batch while ``down`` (as a locked or unreachable store does); counts the writes."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(path)
        self.error, self.writes = error, 0

    def write(self, executions: Any, captures: Any) -> None:
        self.writes += 1
        if any(e.execution_id == "bad" for e in executions):
            raise self.error
        super().write(executions, captures)


class _PickySqlStore(SqliteTrafficStore):
    """:class:`_PickyStore` on the SQL stores' own path: the recorder hands it the records'
    fields (``write_values``), not records."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(path)
        self.error, self.writes = error, 0

    def write_values(self, executions: Any, captures: Any) -> None:
        self.writes += 1
        if any(e[0] == "bad" for e in executions):
            raise self.error
        super().write_values(executions, captures)


@pytest.mark.parametrize("picky", [_PickyStore, _PickySqlStore], ids=["records", "fields"])
@pytest.mark.parametrize(
    ("error", "writes", "stored"),
    [
        # a record's data: the batch again record by record, only that one dropped
        (ValueError("value out of range"), 4, {"good1", "good2"}),
        # the store itself (locked, down) would fail every record again, each waiting out its
        # timeout: the batch is dropped at once
        (sqlite3.OperationalError("database is locked"), 1, set()),
    ],
    ids=["record-error", "store-failure"],
)
def test_a_refused_batch_loses_only_what_the_store_refuses(
    tmp_path: Path, error: Exception, writes: int, stored: set[str], picky: type[_PickyStore]
) -> None:
    store = picky(tmp_path / "t.sqlite3", error)
    recorder = TrafficRecorder(store, flush_interval_s=30)
    recorder.enable("answer", CaptureOptions())
    ids = ("good1", "bad", "good2")
    try:
        for execution_id in ids:
            _serve(recorder, execution_id)
        assert recorder.flush(10)
        assert {i for i in ids if store.find_execution(i) is not None} == stored
        assert recorder.dropped == len(ids) - len(stored)
        assert store.writes == writes
    finally:
        recorder.close()


def test_a_lone_surrogate_in_the_inputs_is_stored_mended(tmp_path: Path) -> None:
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=30)
    recorder.enable("answer", CaptureOptions())
    try:
        _serve(recorder, "e1", question={"q\udc00": "x \ud800"})
        assert recorder.flush(10)
        (capture,) = recorder.store.captures("answer")
        assert capture.inputs == {"question": {"q\ufffd": "x \ufffd"}}
        assert recorder.dropped == 0
    finally:
        recorder.close()


@pytest.mark.anyio
async def test_over_http_a_garbled_answer_is_served_mended_and_captured(
    provider: LocalProvider, tmp_path: Path
) -> None:
    """A model that writes half of a surrogate pair (a JSON escape of half an emoji): the
    answer is served with U+FFFD in its place, and it and its neighbours are captured (it
    was a 500 for the request, and its batch was dropped by the store)."""
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=1.0))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client,
    ):
        recorder = app.state.program_manager.traffic
        provider.script(reply={"answer": "fine"})
        good = await client.post("/programs/answer", json={"question": "fine", "email": "e"})
        provider.script(reply={"answer": "odd \ud83d answer"})  # half a surrogate pair
        garbled = await client.post("/programs/answer", json={"question": "q2", "email": "e"})
        provider.script(reply=None)
        assert garbled.status_code == 200, garbled.text
        assert garbled.json()["data"]["answer"] == "odd \ufffd answer"
        assert await recorder.aflush(10)
        for response in (good, garbled):
            execution_id = response.json()["metadata"]["execution_id"]
            feedback = await client.post(
                "/programs/answer/feedback", json={"execution_id": execution_id, "score": 1}
            )
            assert feedback.status_code == 200, feedback.text
        stored = {c.outputs["answer"] for c in recorder.store.captures("answer") if c.outputs}
        assert stored == {"fine", "odd \ufffd answer"}
        assert recorder.dropped == 0


def test_a_secret_used_as_a_key_is_masked(tmp_path: Path) -> None:
    key = "sk-proj-abcdefghijklmnop0123456789"
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"))
    recorder.enable("answer", CaptureOptions())
    try:
        _serve(recorder, "e1", question={key: "prod"})
        assert recorder.flush(10)
        raw = recorder.store._query("SELECT inputs FROM captures")[0][0]
    finally:
        recorder.close()
    assert key not in raw
    assert "[REDACTED]" in raw


class _FailingCommit:
    """A sqlite3 connection whose first COMMIT fails, as SQLITE_BUSY or a full disk would."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db, self.failures = db, 1

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_a_failed_commit_leaves_the_connection_usable(tmp_path: Path) -> None:
    store = SqliteTrafficStore(tmp_path / "t.sqlite3")
    store._db = _FailingCommit(store._db)  # type: ignore[assignment]
    feedback = Feedback("e1", "answer", "1", "human", 1.0, None, None, "acme", 1.0, 2.0)
    with pytest.raises(sqlite3.OperationalError):
        store.add_feedback(feedback)
    store.add_feedback(feedback)  # the next transaction starts
    store.write([Execution("e9", "answer", "1", None, 5.0)], [])
    store.close()
    reopened = SqliteTrafficStore(tmp_path / "t.sqlite3")
    try:
        assert reopened.find_execution("e9") is not None  # committed, not left open
    finally:
        reopened.close()


def test_enabling_again_stops_the_replaced_judge(tmp_path: Path) -> None:
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=0.01)
    evaluation = OnlineEvaluation(metric=_score, spacing_s=0)
    recorder.enable("answer", CaptureOptions(evaluation=evaluation))

    async def main() -> asyncio.Task[None]:
        _serve(recorder, "e1")
        assert await recorder.aflush(10)
        old = recorder._evaluators["answer"]
        task = old._task
        assert task is not None
        assert not task.done()
        recorder.enable("answer", CaptureOptions(evaluation=OnlineEvaluation(metric=_score)))
        await asyncio.sleep(0.05)
        assert task.done()
        old.enqueue(recorder.store.captures("answer")[0])  # late hand-off: skipped
        assert old.skipped == 1
        assert old._task is None
        await recorder.aclose()
        return task

    assert asyncio.run(main()).cancelled()


class _SlowStore(SqliteTrafficStore):
    def write(self, executions: Any, captures: Any) -> None:
        time.sleep(0.5)
        super().write(executions, captures)


def test_forget_says_so_when_captures_are_still_queued(tmp_path: Path) -> None:
    recorder = TrafficRecorder(_SlowStore(tmp_path / "t.sqlite3"), flush_interval_s=0.01)
    recorder.enable("answer", CaptureOptions())
    try:
        _serve(recorder, "e1")
        with pytest.raises(TimeoutError, match="still queued"):
            recorder.forget("acme", timeout_s=0.1)
        assert recorder.forget("acme") == 0  # written by now; nothing of acme's
    finally:
        recorder.close()


def test_aflush_returns_within_its_timeout_while_judgements_wait(tmp_path: Path) -> None:
    def slow(inputs: Any, outputs: Any) -> float:
        time.sleep(0.3)
        return 1.0

    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=0.01)
    recorder.enable("answer", CaptureOptions(evaluation=OnlineEvaluation(metric=slow, spacing_s=0)))

    async def main() -> tuple[bool, float, bool]:
        for i in range(10):  # ~3 s of judgements
            _serve(recorder, f"e{i}")
        started = time.monotonic()
        done = await recorder.aflush(0.5)
        took = time.monotonic() - started
        drained = await recorder.aflush(30)
        await recorder.aclose()
        return done, took, drained

    done, took, drained = asyncio.run(main())
    assert not done
    assert took < 1.5  # the timeout, plus the judgement in flight in its thread
    assert drained
    assert recorder.evaluation_counts("answer")["scored"] == 10


def test_a_request_served_while_close_runs_is_counted(tmp_path: Path) -> None:
    """close() can finish between a request's check that the recorder is open and its append:
    the late item is dropped and counted, not left queued forever."""
    recorder_box: list[TrafficRecorder] = []
    closing = [True]

    def clock() -> float:  # called inside _put, between the check and the append
        if closing[0] and recorder_box:
            closing[0] = False
            recorder_box[0].close()
        return time.time()

    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), clock=clock)
    recorder.enable("answer", CaptureOptions())
    recorder_box.append(recorder)
    _serve(recorder, "late")
    assert recorder.dropped == 1
    assert not recorder._pending
    assert not recorder._raw


def test_a_judgement_in_flight_when_stopped_is_counted(tmp_path: Path) -> None:
    started = threading.Event()

    def slow(inputs: Any, outputs: Any) -> float:
        started.set()
        time.sleep(0.3)
        return 1.0

    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=0.01)
    recorder.enable("answer", CaptureOptions(evaluation=OnlineEvaluation(metric=slow, spacing_s=0)))

    async def main() -> None:
        _serve(recorder, "e1")
        _serve(recorder, "e2")
        assert await asyncio.to_thread(started.wait, 5)
        await recorder.aclose()

    asyncio.run(main())
    counts = recorder.evaluation_counts("answer")
    assert counts["scored"] + counts["skipped"] == 2, counts


def _slow_hook(record: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.001)  # a redaction hook of 1 ms a capture
    return record


def test_aflush_converts_a_slice_at_a_time_and_keeps_its_timeout(tmp_path: Path) -> None:
    """aflush converts what is queued on its loop, but a slice at a time (64 captures, or
    fewer once 2 ms have passed) with other callbacks in between, and gives up at its deadline
    (the writer takes the rest)."""
    gate = threading.Event()

    class SlowStore(SqliteTrafficStore):
        def write(self, executions: Any, captures: Any) -> None:
            gate.wait(5)  # the store is slow right now
            super().write(executions, captures)

    async def main() -> tuple[bool, float, float, int]:
        recorder = TrafficRecorder(SlowStore(tmp_path / "t.sqlite3"), flush_interval_s=30)
        recorder.enable("answer", CaptureOptions(redact=_slow_hook))
        for i in range(1000):  # a second of hook time
            _serve(recorder, f"e{i:04d}")
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.001)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        started = time.monotonic()
        done = await recorder.aflush(timeout_s=0.5)
        took = time.monotonic() - started
        task.cancel()
        gate.set()
        await asyncio.to_thread(recorder.close)
        reopened = SqliteTrafficStore(tmp_path / "t.sqlite3")
        try:
            return done, took, max(gaps), len(reopened.captures("answer"))
        finally:
            reopened.close()

    done, took, stall, stored = asyncio.run(main())
    assert not done  # the store held the batch past the timeout
    assert took < 0.8, f"aflush(timeout_s=0.5) took {took:.2f} s"
    assert stall < 0.05, f"the loop was blocked {stall * 1000:.0f} ms at once"
    assert stored == 1000  # nothing lost: close wrote what aflush left


class _Proxy:
    """A store wrapping a SQL store (for metrics, say), its ``write`` the inner one's."""

    def __init__(self, inner: SqliteTrafficStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_store_forwarding_to_a_sql_store_gets_its_captures(tmp_path: Path) -> None:
    inner = SqliteTrafficStore(tmp_path / "t.sqlite3")
    recorder = TrafficRecorder(_Proxy(inner))  # type: ignore[arg-type]
    recorder.enable("answer", CaptureOptions())
    try:
        for i in range(3):
            _serve(recorder, f"e{i}")
        assert recorder.flush(10)
        assert recorder.dropped == 0
        assert len(inner.captures("answer")) == 3
    finally:
        recorder.close()


def test_a_malformed_envelope_drops_its_capture_not_the_queue(tmp_path: Path) -> None:
    # served() is public: an envelope a route did not build (its model a string) cannot be
    # read; that capture is dropped and counted, the others are written, and flush returns
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=30)
    recorder.enable("answer", CaptureOptions())
    try:
        _serve(recorder, "before")
        bad = {"data": {}, "metadata": {"execution_id": "bad", "model": "m"}}
        recorder.served("answer", {"question": "q"}, bad)
        _serve(recorder, "after")
        assert recorder.flush(10)
        assert recorder.flush(1)  # and again: nothing is left waiting
        stored = {c.execution_id for c in recorder.store.captures("answer")}
        with pytest.raises(ExecutionNotFoundError):
            recorder.find_execution("answer", "bad")
    finally:
        recorder.close()
    assert stored == {"before", "after"}
    assert recorder.dropped == 1


class _GatedStore(SqliteTrafficStore):
    """A store whose writes wait for ``gate`` (a slow store), saying when one has begun."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate, self.entered = threading.Event(), threading.Event()

    def write(self, executions: Any, captures: Any) -> None:
        self.entered.set()
        self.gate.wait(10)
        super().write(executions, captures)


def test_flush_waits_for_an_earlier_capture_behind_a_malformed_one(tmp_path: Path) -> None:
    """A capture dropped at its conversion is done in its turn: a malformed one served while
    the writer stores an earlier one must not let flush (or forget) return before it."""
    store = _GatedStore(tmp_path / "t.sqlite3")
    recorder = TrafficRecorder(store, flush_interval_s=30)
    recorder.enable("answer", CaptureOptions())

    async def main() -> bool:
        _serve(recorder, "A")
        await asyncio.sleep(0.3)  # the loop converted A; the writer sleeps
        flushing = asyncio.ensure_future(asyncio.to_thread(recorder.flush, 1.5))
        assert await asyncio.to_thread(store.entered.wait, 5)  # the writer is storing A
        bad = {"data": {}, "metadata": {"execution_id": "bad", "model": "m"}}
        recorder.served("answer", {"question": "q"}, bad)  # converted (dropped) meanwhile
        return await flushing

    try:
        done = asyncio.run(main())
    finally:
        store.gate.set()
        recorder.close()
    assert done is False  # A was still being written when the timeout passed
    assert recorder.dropped == 1


def test_aflush_under_steady_traffic_flushes_what_was_queued(tmp_path: Path) -> None:
    """A capture arriving in every loop iteration (a busy server) does not keep aflush
    converting until its deadline: it converts what was queued when called."""
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"))
    recorder.enable("answer", CaptureOptions())
    stop = False

    async def producer() -> None:
        n = 0
        while not stop:
            time.sleep(0.001)  # noqa: ASYNC251 -- a request's work on the loop
            _serve(recorder, f"live{n}")
            n += 1
            await asyncio.sleep(0)

    async def main() -> tuple[bool, float]:
        nonlocal stop
        for i in range(50):
            _serve(recorder, f"pre{i}")
        task = asyncio.create_task(producer())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        done = await recorder.aflush(3.0)
        took = time.monotonic() - started
        stop = True
        await task
        return done, took

    try:
        done, took = asyncio.run(main())
    finally:
        recorder.close()
    assert done
    assert took < 2.0, f"aflush(3.0) took {took:.2f} s"


def test_aflush_keeps_its_timeout_waiting_for_a_worker_thread(tmp_path: Path) -> None:
    """Two flushes stuck on a slow store hold the recorder's two worker threads: a third
    aflush gives up at its own timeout instead of waiting for a thread."""
    store = _GatedStore(tmp_path / "t.sqlite3")
    recorder = TrafficRecorder(store, flush_interval_s=30)
    recorder.enable("answer", CaptureOptions())

    async def main() -> tuple[bool, float]:
        _serve(recorder, "A")
        stuck = [asyncio.ensure_future(recorder.aflush(3)) for _ in range(2)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        done = await recorder.aflush(0.3)
        took = time.monotonic() - started
        store.gate.set()
        await asyncio.gather(*stuck)
        return done, took

    try:
        done, took = asyncio.run(main())
    finally:
        store.gate.set()
        recorder.close()
    assert not done
    assert took < 1.5, f"aflush(timeout_s=0.3) took {took:.2f} s"
