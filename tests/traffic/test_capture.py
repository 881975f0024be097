"""Capture over real HTTP: what is stored is what was served, sampled, redacted, bounded."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import threading
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _traffic_helpers import PLANTED_KEY, build_app

from _uvicorn_thread import uvicorn_thread
from llm_server.core.budgets import tenant_scope
from llm_server.core.errors import ExecutionNotFoundError
from llm_server.testing import LocalProvider, RawReply
from llm_server.traffic import (
    CapturedRequest,
    CaptureOptions,
    Execution,
    Feedback,
    SqliteTrafficStore,
    TrafficRecorder,
)
from llm_server.traffic._store_sqlite import _statements


def _ask(client: httpx.Client, question: str, tenant: str | None = None) -> dict[str, Any]:
    headers = {"X-Tenant-ID": tenant} if tenant else {}
    response = client.post(
        "/programs/answer",
        json={"question": question, "email": f"{question}@example.com"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_captures_match_what_was_served(provider: LocalProvider, tmp_path: Path) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=1.0))
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        served = [_ask(client, f"q{i}", tenant=("acme" if i % 2 else "beta")) for i in range(12)]
        recorder = app.state.program_manager.traffic
        assert recorder.flush(10)
        stored = {c.execution_id: c for c in recorder.store.captures("answer")}
    assert len(stored) == 12
    for i, body in enumerate(served):
        meta = body["metadata"]
        capture = stored[meta["execution_id"]]
        assert capture.inputs == {"question": f"q{i}", "email": f"q{i}@example.com"}
        assert capture.outputs == body["data"]
        assert capture.version == meta["program"]["version"] == "1.0.0"
        assert capture.model_id == meta["model"]["id"]
        assert capture.input_tokens == meta["performance"]["tokens"]["input"] > 0
        assert capture.output_tokens == meta["performance"]["tokens"]["output"] > 0
        assert capture.cost_usd == pytest.approx(meta["performance"]["tokens"]["cost_usd"])
        assert capture.latency_ms is not None
        assert capture.latency_ms > 0
        assert capture.tenant == ("acme" if i % 2 else "beta")
        assert capture.canary is False
        assert capture.error_type is None


def test_a_failed_request_is_captured_with_its_error_type(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=1.0))
    provider.add_fault("server_error", model="gpt-4o-mini")
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/programs/answer", json={"question": "q", "email": "e"})
        assert response.status_code >= 500
        recorder = app.state.program_manager.traffic
        assert recorder.flush(10)
        (capture,) = recorder.store.captures("answer")
    assert capture.execution_id == response.json()["execution_id"]
    assert capture.error_type == response.json()["error"]["type"]
    assert capture.outputs is None
    billed = response.json().get("usage") or {}
    assert capture.input_tokens == billed.get("input")  # a failure's billed tokens, if any


def test_a_rejected_answer_is_captured_with_the_tokens_it_was_billed(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=1.0))
    provider.script(reply=RawReply("no field markers at all"))
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/programs/answer", json={"question": "q", "email": "e"})
        assert response.status_code == 502, response.text
        recorder = app.state.program_manager.traffic
        assert recorder.flush(10)
        (capture,) = recorder.store.captures("answer")
    body = response.json()
    assert capture.error_type == body["error"]["type"]
    assert capture.input_tokens == body["usage"]["input"] > 0
    assert capture.output_tokens == body["usage"]["output"]
    assert capture.cost_usd == pytest.approx(body["usage"]["cost_usd"])


@pytest.mark.anyio
async def test_a_sample_rate_of_a_tenth_captures_about_a_tenth(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=0.1))
    requests = 1000
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        limiter = anyio.Semaphore(16)

        async def ask(i: int) -> None:
            async with limiter:
                response = await client.post(
                    "/programs/answer", json={"question": f"q{i}", "email": "e"}
                )
                assert response.status_code == 200

        async with anyio.create_task_group() as tg:
            for i in range(requests):
                tg.start_soon(ask, i)
        recorder = app.state.program_manager.traffic
        assert await recorder.aflush(20)
        captured = len(recorder.store.captures("answer"))
        executions = recorder.store._query("SELECT COUNT(*) FROM executions")[0][0]
        ids = [row[0] for row in recorder.store._query("SELECT execution_id FROM executions")]
        findable = all(recorder.store.find_execution(i) is not None for i in ids)
    # Binomial(1000, 0.1): sd 9.5; 5 sd either side fails about once in 3.5 million runs.
    bound = 5 * math.sqrt(requests * 0.1 * 0.9)
    assert abs(captured - 100) <= bound, captured
    # every request's version stays findable for feedback: a captured one in its capture,
    # the others in an execution row of their own
    assert executions + captured == requests
    assert findable


def test_redaction_hides_named_fields_and_keys_in_storage(
    provider: LocalProvider, tmp_path: Path
) -> None:
    def no_digits(record: dict[str, Any]) -> dict[str, Any]:
        question = record["inputs"]["question"]
        record["inputs"]["question"] = "".join("#" if c.isdigit() else c for c in question)
        return record

    options = CaptureOptions(redact_fields=frozenset({"email"}), redact=no_digits)
    app = build_app(provider, tmp_path, options)
    provider.script(reply="no echo here")  # the echo would copy the inputs into the output
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post(
            "/programs/answer",
            json={"question": f"call 5551234 key {PLANTED_KEY}", "email": "ann@secret.example"},
        )
        assert response.status_code == 200
        recorder = app.state.program_manager.traffic
        assert recorder.flush(10)
        (capture,) = recorder.store.captures("answer")
    assert capture.inputs["email"] == "[REDACTED]"
    assert "5551234" not in capture.inputs["question"]
    assert PLANTED_KEY not in str(capture.inputs) + str(capture.outputs)
    raw = b"".join(p.read_bytes() for p in (tmp_path / "programs").glob("traffic.sqlite3*"))
    assert raw, "the capture file is where the settings say"
    for secret in (b"ann@secret.example", b"5551234", PLANTED_KEY.encode()):
        assert secret not in raw


def _capture(execution_id: str, tenant: str, served_at: float) -> CapturedRequest:
    return CapturedRequest(
        execution_id, "answer", "1.0.0", False, "m", {"question": "q"}, {"answer": "a"},
        1, 1, None, 1.0, None, tenant, served_at,
    )  # fmt: skip


def test_a_captured_request_is_stored_once_and_every_execution_is_found(
    tmp_path: Path,
) -> None:
    store = SqliteTrafficStore(tmp_path / "t.sqlite3")
    executions = [Execution(f"e{i}", "answer", "1.0.0", "acme", 100.0 + i) for i in range(4)]
    captures = [_capture("e0", "acme", 100.0), _capture("e2", "acme", 102.0)]
    try:
        store.write(executions, captures)
        store.write(executions, captures)  # a batch written again changes nothing
        table = store._query("SELECT execution_id FROM executions ORDER BY execution_id")
        found = [store.find_execution(f"e{i}") for i in range(4)]
        # a store written before captured requests left their execution row out holds both
        row = "('e0', 'answer', '1.0.0', 'acme', 100)"
        store._change([(f"INSERT INTO executions VALUES {row}", ())])
        old = store.find_execution("e0")
    finally:
        store.close()
    assert [row[0] for row in table] == ["e1", "e3"]  # e0 and e2 live in captures
    assert found == executions
    assert old == executions[0]


@pytest.mark.parametrize("parameters", [32_766, 30])  # SQLite's limit since 3.32; a tiny one
def test_a_batch_is_written_whole_whatever_sqlites_parameter_limit(
    tmp_path: Path, parameters: int
) -> None:
    store = SqliteTrafficStore(tmp_path / "t.sqlite3")
    store._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, parameters)  # 30: 2 captures each
    executions = [Execution(f"e{i}", "answer", "1.0.0", None, 100.0 + i) for i in range(9)]
    captures = [_capture(f"e{i}", "acme", 100.0 + i) for i in range(0, 9, 2)]
    try:
        store.write(executions, captures)
        stored = [c.execution_id for c in store.captures("answer")]
        found = [store.find_execution(f"e{i}") for i in range(9)]
    finally:
        store.close()
    assert stored == ["e0", "e2", "e4", "e6", "e8"]
    assert [f.execution_id if f else None for f in found] == [f"e{i}" for i in range(9)]


def test_any_batch_size_takes_one_of_nine_statement_texts() -> None:
    # a text per batch size would be compiled again for each size the traffic makes
    texts: set[str] = set()
    for size in range(1, 700):
        rows = [(f"e{i}", i) for i in range(size)]
        statements = list(_statements([("INSERT INTO t VALUES (?, ?)", rows)], 32_766))
        params = [p for _, chunk in statements for p in chunk]
        assert params == [p for row in rows for p in row]  # every row, in order
        for text, chunk in statements:
            assert text.count("?") == len(chunk) <= 2 * 256
        texts.update(text for text, _ in statements)
    assert len(texts) == 9  # 1, 2, 4, ... 256 rows
    assert all(text.startswith("INSERT OR IGNORE INTO t VALUES") for text in texts)


def test_retention_deletes_old_records_periodically(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = SqliteTrafficStore(tmp_path / "t.sqlite3")
    recorder = TrafficRecorder(store, clock=lambda: now[0], retention_interval_s=0.02)
    recorder.enable("answer", CaptureOptions(retention_days=1))
    day = 86400.0
    store.write(
        [Execution(f"e{i}", "answer", "1.0.0", "acme", now[0] - i * day / 2) for i in range(4)],
        [_capture(f"e{i}", "acme", now[0] - i * day / 2) for i in range(4)],
    )
    store.add_feedback(
        Feedback("e3", "answer", "1.0.0", "human", 1.0, None, None, "acme", now[0] - 1.5 * day, 0)
    )
    with pytest.raises(ExecutionNotFoundError, match="e3"):  # 1.5 days old: past retention
        recorder.add_feedback("answer", "e3", score=1.0)
    deadline = time.monotonic() + 5
    while len(store.captures("answer")) > 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert [c.execution_id for c in store.captures("answer")] == ["e2", "e1", "e0"]
        assert store.feedback("answer") == []
        assert store.find_execution("e3") is None
        now[0] += day  # a day later only e0 (served "now") is within a day... and not e1, e2
        deadline = time.monotonic() + 5
        while len(store.captures("answer")) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [c.execution_id for c in store.captures("answer")] == ["e0"]
    finally:
        recorder.close()


def test_forget_deletes_a_tenants_records(provider: LocalProvider, tmp_path: Path) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=1.0))
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        acme = [_ask(client, f"a{i}", tenant="acme") for i in range(3)]
        _ask(client, "b", tenant="beta")
        recorder = app.state.program_manager.traffic
        recorder.add_feedback("answer", acme[0]["metadata"]["execution_id"], score=1)
        deleted = recorder.forget("acme")
        remaining = recorder.store.captures("answer")
        feedback = recorder.store.feedback("answer")
        found = recorder.store.find_execution(acme[1]["metadata"]["execution_id"])
    assert deleted == 3 + 1  # captures (a captured request has no execution row), feedback
    assert [c.tenant for c in remaining] == ["beta"]
    assert feedback == []
    assert found is None


class _StuckStore(SqliteTrafficStore):
    """A store whose writes wait until released: the writer thread is stuck in it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()

    def write(self, executions: Sequence[Execution], captures: Sequence[CapturedRequest]) -> None:
        self.release.wait(30)
        super().write(executions, captures)


def test_a_full_queue_drops_and_counts_without_slowing_requests(
    provider: LocalProvider, tmp_path: Path
) -> None:
    store = _StuckStore(tmp_path / "stuck.sqlite3")
    recorder = TrafficRecorder(store, queue_size=2, batch_size=1)
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=1.0), recorder=recorder)
    requests = 30
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        started = time.perf_counter()
        for i in range(requests):
            _ask(client, f"q{i}")
        elapsed = time.perf_counter() - started
        dropped = recorder.dropped
        store.release.set()
        assert recorder.flush(10)
        kept = len(store.captures("answer"))
    # The writer holds one item in the stuck write, the queue two: every other one is dropped.
    assert requests - 3 <= dropped <= requests - 2
    assert kept == requests - dropped
    assert elapsed < 25  # the stuck store would hold a waiting request for 30 s


def test_a_failing_redaction_hook_drops_the_capture_not_the_request(
    provider: LocalProvider, tmp_path: Path
) -> None:
    def broken(record: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("bug in the host's hook")

    app = build_app(provider, tmp_path, CaptureOptions(redact=broken))
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        execution_id = _ask(client, "q")["metadata"]["execution_id"]
        recorder = app.state.program_manager.traffic
        assert recorder.flush(10)
        captures = recorder.store.captures("answer")
        execution = recorder.store.find_execution(execution_id)
    assert captures == []
    assert recorder.dropped == 1
    assert execution is not None  # feedback on it still finds its version
    assert execution.version == "1.0.0"


def test_a_canary_flag_in_the_envelope_is_kept(tmp_path: Path) -> None:
    recorder = TrafficRecorder(SqliteTrafficStore(tmp_path / "t.sqlite3"))
    recorder.enable("answer", CaptureOptions())
    for execution_id, canary in (("stable", None), ("canary", True)):
        program = {"id": "answer", "version": "1.1.0"}
        if canary is not None:
            program["canary"] = canary  # what canary releases add to metadata.program
        envelope = {
            "data": {"answer": "a"},
            "metadata": {"program": program, "model": {"id": "m"}, "execution_id": execution_id},
        }
        recorder.served("answer", {"question": "q"}, envelope)
    try:
        assert recorder.flush(10)
        flags = {c.execution_id: c.canary for c in recorder.store.captures("answer")}
    finally:
        recorder.close()
    assert flags == {"stable": False, "canary": True}


class _RecordsStore(SqliteTrafficStore):
    """A store with its own ``write``: the recorder hands it records, not their fields."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.handed: list[Any] = []

    def write(self, executions: Sequence[Execution], captures: Sequence[CapturedRequest]) -> None:
        self.handed.extend([*executions, *captures])
        super().write(executions, captures)


def test_a_store_with_its_own_write_gets_records_and_stores_the_same(tmp_path: Path) -> None:
    # A SQL store is handed the records' fields (tuples); one that overrides write gets the
    # records, built from the same fields: what each stores is the same.
    stored: list[list[CapturedRequest]] = []
    executions: list[Execution | None] = []
    for store in (
        SqliteTrafficStore(tmp_path / "a.sqlite3"),
        _RecordsStore(tmp_path / "b.sqlite3"),
    ):
        recorder = TrafficRecorder(store, clock=lambda: 1000.0, rng=random.Random(3))
        recorder.enable("answer", CaptureOptions(sample_rate=0.5, redact_fields={"email"}))
        with tenant_scope("acme"):
            for i in range(20):
                envelope = {
                    "data": {"answer": f"a{i}"},
                    "metadata": {
                        "execution_id": f"e{i:02d}",
                        "program": {"version": "1.0.0", "canary": i % 3 == 0},
                        "model": {"id": "m"},
                        "performance": {
                            "timing": {"total_ms": 2.5},
                            "tokens": {"input": 7, "output": 3, "cost_usd": 1e-05},
                        },
                    },
                }
                recorder.served("answer", {"question": f"q{i}", "email": "x@y.z"}, envelope)
        try:
            assert recorder.flush(10)
            stored.append(recorder.store.captures("answer"))
            executions.append(recorder.store.find_execution("e01"))
        finally:
            recorder.close()
        if isinstance(store, _RecordsStore):
            kinds = {type(record) for record in store.handed}
            assert kinds == {Execution, CapturedRequest}
            assert sum(isinstance(r, Execution) for r in store.handed) == 20
    assert 4 <= len(stored[0]) <= 16  # about half, the same half: the same random draws
    assert stored[0] == stored[1]
    assert executions[0] == executions[1] == Execution("e01", "answer", "1.0.0", "acme", 1000.0)
    first = stored[0][0]
    assert first.inputs == {"question": first.inputs["question"], "email": "[REDACTED]"}
    assert (first.input_tokens, first.output_tokens, first.cost_usd) == (7, 3, 1e-05)
    assert first.tenant == "acme"
    assert first.latency_ms == 2.5


class _CountingStore(SqliteTrafficStore):
    """A store that remembers the size of each batch it was asked to write."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def write(self, executions: Sequence[Execution], captures: Sequence[CapturedRequest]) -> None:
        self.batches.append(len(executions))
        super().write(executions, captures)


def test_captures_arriving_apart_are_written_in_one_batch(tmp_path: Path) -> None:
    # A transaction per capture cost SQLite ~5x the CPU of a batch (the writer woke on every
    # put and wrote 1.4 captures per transaction under load): within the flush interval,
    # captures arriving a few milliseconds apart share one.
    store = _CountingStore(tmp_path / "t.sqlite3")
    recorder = TrafficRecorder(store, flush_interval_s=0.5)
    recorder.enable("answer", CaptureOptions())
    envelope = {"data": {"answer": "a"}, "metadata": {"program": {"version": "1.0.0"}}}
    try:
        for i in range(20):
            metadata = {**envelope["metadata"], "execution_id": f"e{i}"}
            recorder.served("answer", {"question": "q"}, {**envelope, "metadata": metadata})
            time.sleep(0.005)
        assert recorder.flush(10)
    finally:
        recorder.close()
    assert sum(store.batches) == 20
    assert len(store.batches) <= 2, store.batches


class _Float(float):
    """A float subclass, as numpy's float64 is."""


# Each takes a different path through the store's JSON encoding (orjson, or the stdlib's)
_AWKWARD_VALUES: list[tuple[str, Any]] = [
    ("text", "héllo \u2028 wörld"),
    ("none", None),  # null: the stdlib encoder writes it
    ("nan", math.nan),  # orjson would write null
    ("infinity", -math.inf),
    ("big int", 2**70),  # orjson refuses it
    ("float subclass", _Float(1.5)),  # orjson would hand it to default (str)
    ("small float", 1e-05),
    ("nested", {"b": [1, (2, 3)], "a": {"deep": True}}),
]


@pytest.mark.parametrize(("name", "value"), _AWKWARD_VALUES, ids=[n for n, _ in _AWKWARD_VALUES])
def test_captured_values_read_back_as_they_were(tmp_path: Path, name: str, value: Any) -> None:
    store = SqliteTrafficStore(tmp_path / "t.sqlite3")
    capture = CapturedRequest(
        "e1", "answer", "1.0.0", False, "m", types.MappingProxyType({"question": value}),
        {"answer": value, "z": 1, "a": 2}, 1, 1, None, 1.0, None, None, 100.0,
    )  # fmt: skip
    try:
        store.write([Execution("e1", "answer", "1.0.0", None, 100.0)], [capture])
        (stored,) = store.captures("answer")
    finally:
        store.close()
    expected = json.loads(json.dumps(value))  # what the stdlib's JSON reads back
    for read in (stored.inputs["question"], (stored.outputs or {})["answer"]):
        assert type(read) is type(expected)
        if name == "nan":
            assert math.isnan(read)
        else:
            assert read == expected
    assert list(stored.outputs or {}) == ["a", "answer", "z"]  # keys stored sorted
