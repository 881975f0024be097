"""RequestContextMiddleware: execution ids, log context, one trace per request."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import anyio
import pytest
from _web_helpers import MakeApp, serving
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from llm_server.core.config import FrameworkSettings
from llm_server.core.opentelemetry_integration import Telemetry, set_telemetry
from llm_server.core.telemetry._logging import LogContextFilter
from llm_server.fastapi import RequestContextMiddleware

pytestmark = pytest.mark.anyio


async def test_each_request_gets_an_execution_id_in_header_and_envelope(make_app: MakeApp) -> None:
    async with serving(make_app()) as client:
        ok = await client.post("/programs/summarize", json={"text": "a"})
        failed = await client.post("/programs/summarize", json={"text": "a", "model_id": "nope"})
    ok_id, failed_id = ok.headers["x-execution-id"], failed.headers["x-execution-id"]
    assert uuid.UUID(ok_id).version == 7
    assert ok.json()["metadata"]["execution_id"] == ok_id
    assert failed.json()["execution_id"] == failed_id
    assert ok_id != failed_id


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("req-12345678", True),
        ("A_b-C_d-0123456789", True),
        ("short", False),
        ("x" * 65, False),
        ("has space 123", False),
        ("caf\u00e9-12345678".encode("latin-1"), False),
    ],
)
async def test_a_plausible_caller_id_is_kept(
    make_app: MakeApp, sent: str | bytes, kept: bool
) -> None:
    async with serving(make_app()) as client:
        response = await client.get("/health/live", headers={"X-Execution-ID": sent})
    echoed = response.headers["x-execution-id"]
    assert (echoed == (sent if isinstance(sent, str) else sent.decode("latin-1"))) is kept
    assert 8 <= len(echoed) <= 64


async def test_concurrent_requests_keep_their_own_ids(make_app: MakeApp) -> None:
    results: dict[str, str] = {}

    async with serving(make_app()) as client:

        async def one(i: int) -> None:
            sent = f"request-{i:04d}"
            response = await client.post(
                "/programs/summarize", json={"text": f"n{i}"}, headers={"X-Execution-ID": sent}
            )
            results[sent] = response.json()["metadata"]["execution_id"]

        async with anyio.create_task_group() as group:
            for i in range(30):
                group.start_soon(one, i)
    assert results == {sent: sent for sent in results}
    assert len(results) == 30


async def test_log_records_carry_the_execution_id(make_app: MakeApp) -> None:
    app = make_app()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    handler.addFilter(LogContextFilter())
    logger = logging.getLogger("llm_server.test_app")
    logger.addHandler(handler)

    @app.get("/logs")
    async def logs() -> dict[str, bool]:
        logger.warning("inside the request")
        return {"ok": True}

    try:
        async with serving(app) as client:
            response = await client.get("/logs")
    finally:
        logger.removeHandler(handler)
    [record] = seen
    assert record.execution_id == response.headers["x-execution-id"]  # type: ignore[attr-defined]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """An OTel SDK with an in-memory exporter behind the process-wide telemetry."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    set_telemetry(Telemetry(FrameworkSettings(otel_enabled=True), tracer_provider=provider))
    yield exporter
    set_telemetry(None)
    provider.shutdown()


async def test_the_envelope_trace_id_is_the_requests_trace(
    make_app: MakeApp, exporter: InMemorySpanExporter
) -> None:
    async with serving(make_app(otel_enabled=True)) as client:
        response = await client.post("/programs/summarize", json={"text": "traced"})
    trace_id = response.json()["metadata"]["performance"]["trace_id"]
    spans = exporter.get_finished_spans()
    [root] = [s for s in spans if s.parent is None]
    assert root.kind is SpanKind.SERVER
    assert root.name == "POST"
    assert trace_id == format(root.context.trace_id, "032x")
    assert {format(s.context.trace_id, "032x") for s in spans} == {trace_id}
    assert any(s.name == "chat gpt-4o-mini" for s in spans), [s.name for s in spans]


async def test_an_error_envelope_keeps_the_trace(
    make_app: MakeApp, exporter: InMemorySpanExporter
) -> None:
    async with serving(make_app(otel_enabled=True)) as client:
        response = await client.post("/programs/summarize", json={"text": "x", "model_id": "no"})
    assert response.status_code == 404
    [root] = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert root.kind is SpanKind.SERVER


async def test_websocket_and_lifespan_scopes_pass_through() -> None:
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    with TestClient(app) as client, client.websocket_connect("/ws") as socket:
        assert socket.receive_text() == "hi"
