"""What keeps capture and its judge off the requests' way: the conversion runs on the event loop
a few items per callback, in order, and a close writes everything; the judge waits for an idle
loop, spaced, and skips (counted) what found none."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from llm_server.traffic import (
    CapturedRequest,
    CaptureOptions,
    Execution,
    OnlineEvaluation,
    SqliteTrafficStore,
    TrafficRecorder,
)
from llm_server.traffic._capture import _SLICE

pytestmark = pytest.mark.anyio


class _OrderStore(SqliteTrafficStore):
    """A store that remembers the execution ids in the order it was asked to write them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.order: list[str] = []

    def write(self, executions: Sequence[Execution], captures: Sequence[CapturedRequest]) -> None:
        self.order.extend(e.execution_id for e in executions)
        super().write(executions, captures)


def _serve(recorder: TrafficRecorder, execution_id: str) -> None:
    envelope = {
        "data": {"answer": f"answer {execution_id}"},
        "metadata": {"execution_id": execution_id, "program": {"version": "1.0.0"}},
    }
    recorder.served("answer", {"question": f"question {execution_id}"}, envelope)


async def test_the_loop_converts_a_few_captures_per_callback_in_order(tmp_path: Path) -> None:
    converted: list[tuple[int, str]] = []  # (the loop's turn, the capture's question)
    turn = 0

    def hook(record: dict[str, Any]) -> dict[str, Any]:
        assert threading.get_ident() == loop_thread  # never the writer thread
        converted.append((turn, record["inputs"]["question"]))
        return record

    loop_thread = threading.get_ident()
    store = _OrderStore(tmp_path / "t.sqlite3")
    recorder = TrafficRecorder(store, flush_interval_s=30)  # the writer sleeps meanwhile
    recorder.enable("answer", CaptureOptions(redact=hook))
    try:
        ids = [f"e{i:03d}" for i in range(3 * _SLICE + 5)]
        for execution_id in ids:
            _serve(recorder, execution_id)
        assert converted == []  # the request path only enqueues
        deadline = time.monotonic() + 10
        while len(converted) < len(ids) and time.monotonic() < deadline:
            turn += 1
            await asyncio.sleep(0)
        per_turn = [sum(1 for t, _ in converted if t == n) for n in range(1, turn + 1)]
        assert [q for _, q in converted] == [f"question {e}" for e in ids]
        assert max(per_turn) <= _SLICE  # a slice per callback, other callbacks in between
        assert max(per_turn) >= _SLICE // 2  # a slice, not one capture per callback
        assert sum(1 for n in per_turn if n) >= 4
        assert store.order == []  # nothing written yet: the writer has not woken
    finally:
        recorder.close()
    assert store.order == ids
    assert recorder.dropped == 0


async def test_close_right_after_serving_writes_every_capture_in_order(tmp_path: Path) -> None:
    # Nothing converted yet when close() runs on the loop's own thread (the loop cannot run its
    # conversion callbacks): the writer converts what is left and writes it, in order.
    store = _OrderStore(tmp_path / "t.sqlite3")
    recorder = TrafficRecorder(store, flush_interval_s=30, batch_size=7)
    recorder.enable("answer", CaptureOptions())
    ids = [f"e{i:03d}" for i in range(40)]
    for execution_id in ids:
        _serve(recorder, execution_id)
    recorder.close()
    reopened = SqliteTrafficStore(store.path)
    try:
        stored = [c.execution_id for c in reopened.captures("answer")]
    finally:
        reopened.close()
    assert store.order == ids
    assert sorted(stored) == ids
    assert recorder.dropped == 0


async def test_flush_on_the_loops_thread_does_not_wait_for_the_loop(tmp_path: Path) -> None:
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=30)
    recorder.enable("answer", CaptureOptions())
    try:
        for i in range(10):
            _serve(recorder, f"e{i}")
        started = time.perf_counter()
        assert recorder.flush(10)  # blocks the loop: the writer converts, woken by the flush
        assert time.perf_counter() - started < 5
        assert len(recorder.store.captures("answer")) == 10
    finally:
        recorder.close()


async def test_the_writer_leaves_a_running_loops_captures_to_it(tmp_path: Path) -> None:
    # Converted on the writer thread, a capture costs about twice the CPU (every Python step
    # there contends with the loop for the interpreter lock): a writer waking often still
    # leaves the conversion to the loop that has it scheduled.
    threads: list[int] = []

    def hook(record: dict[str, Any]) -> dict[str, Any]:
        threads.append(threading.get_ident())
        return record

    # a wake every 50 ms, 20 ms after a capture came in as often as not
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=0.05)
    recorder.enable("answer", CaptureOptions(redact=hook))
    try:
        for i in range(40):
            _serve(recorder, f"e{i:03d}")
            # the loop busy, as with requests; 10 ms a batch, well within the writer's 50 ms,
            # which would take a head that stayed put for a whole interval as a stalled loop
            time.sleep(0.001)  # noqa: ASYNC251
            if i % 10 == 9:
                await asyncio.sleep(0.03)  # the loop's conversion runs
        assert await recorder.aflush(10)
        stored = len(recorder.store.captures("answer"))
    finally:
        recorder.close()
    assert stored == 40
    assert set(threads) == {threading.get_ident()}


async def test_the_writer_converts_what_a_blocked_loop_leaves(tmp_path: Path) -> None:
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=0.05)
    recorder.enable("answer", CaptureOptions())
    try:
        for i in range(10):
            _serve(recorder, f"e{i}")
        started = time.monotonic()
        stored = 0
        while stored < 10 and time.monotonic() < started + 5:
            time.sleep(0.01)  # noqa: ASYNC251 -- the loop is blocked: it cannot convert
            stored = len(recorder.store.captures("answer"))
        waited = time.monotonic() - started
    finally:
        recorder.close()
    assert stored == 10
    assert waited < 1  # two writer intervals and the write, not a flush or a close


def _metric_at(calls: list[float]) -> Any:
    def metric(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> float:
        calls.append(time.monotonic())
        return 1.0

    return metric


async def test_judgements_are_spaced_never_a_burst(tmp_path: Path) -> None:
    calls: list[float] = []
    evaluation = OnlineEvaluation(metric=_metric_at(calls), spacing_s=0.1)
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=0.01)
    recorder.enable("answer", CaptureOptions(evaluation=evaluation))
    try:
        for i in range(5):
            _serve(recorder, f"e{i}")  # one batch: five captures handed over at once
        assert await recorder.aflush(20)
    finally:
        await recorder.aclose()
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) == 5
    assert min(gaps) >= 0.09, gaps
    assert recorder.evaluation_counts("answer") == {"scored": 5, "skipped": 0, "skipped_busy": 0}


async def test_a_busy_loop_skips_judgements_and_counts_them(tmp_path: Path) -> None:
    calls: list[float] = []
    evaluation = OnlineEvaluation(metric=_metric_at(calls), spacing_s=0, max_delay_s=0.3)
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"), flush_interval_s=0.01)
    recorder.enable("answer", CaptureOptions(evaluation=evaluation))
    busy = True

    async def hog() -> None:  # a saturated server: some callback is always ready
        while busy:
            end = time.perf_counter() + 0.002
            while time.perf_counter() < end:
                # busy, but letting other threads in as a server's I/O does (a pure Python
                # spin kept the writer thread from the interpreter lock for seconds)
                time.sleep(0)  # noqa: ASYNC251 -- blocking on purpose: a busy loop
            await asyncio.sleep(0)

    hogs = [asyncio.get_running_loop().create_task(hog()) for _ in range(2)]
    try:
        for i in range(6):
            _serve(recorder, f"e{i}")
        # the loop stays busy until every capture has waited max_delay_s in vain (however
        # late a loaded machine runs the writer that hands them to the evaluation)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if recorder.evaluation_counts("answer")["skipped"] == 6:
                break
            await asyncio.sleep(0.05)
        busy = False
        await asyncio.gather(*hogs)
        assert await recorder.aflush(20)
        counts = recorder.evaluation_counts("answer")
        assert counts == {"scored": 0, "skipped": 6, "skipped_busy": 6}
        assert calls == []
        for i in range(6, 9):  # an idle loop again: judged
            _serve(recorder, f"e{i}")
        assert await recorder.aflush(20)
        assert recorder.evaluation_counts("answer") == {
            "scored": 3,
            "skipped": 6,
            "skipped_busy": 6,
        }
    finally:
        busy = False
        await recorder.aclose()
