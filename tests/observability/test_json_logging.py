"""Structured JSON logs with per-request context carried in contextvars."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from llm_server.core.opentelemetry_integration import current_trace_id
from llm_server.core.telemetry import configure_json_logging, log_context
from llm_server.core.telemetry._logging import current_execution_id, get_log_context

log = logging.getLogger("llm_server.tests")
FIELDS = [
    "timestamp",
    "level",
    "logger",
    "message",
    "execution_id",
    "trace_id",
    "span_id",
    "model_id",
    "program_id",
]


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_the_context_fields() -> None:
    stream = io.StringIO()
    configure_json_logging(stream=stream)

    with log_context(execution_id="exec-1", model_id="fast", program_id="predictor"):
        log.info("answered %s in %d ms", "q1", 12)

    (record,) = lines(stream)
    assert list(record)[: len(FIELDS)] == FIELDS
    assert record["level"] == "INFO"
    assert record["logger"] == "llm_server.tests"
    assert record["message"] == "answered q1 in 12 ms"
    assert (record["execution_id"], record["model_id"], record["program_id"]) == (
        "exec-1",
        "fast",
        "predictor",
    )
    assert record["timestamp"].endswith("Z")
    assert len(record["trace_id"]) == 32
    assert record["span_id"] is None


def test_outside_any_context_the_ids_are_null() -> None:
    stream = io.StringIO()
    configure_json_logging(stream=stream)
    log.warning("no request")
    (record,) = lines(stream)
    assert record["execution_id"] is None
    assert record["trace_id"] is None


def test_trace_and_span_ids_come_from_the_active_span() -> None:
    stream = io.StringIO()
    configure_json_logging(stream=stream)
    tracer = TracerProvider().get_tracer("test")

    with log_context(execution_id="e"), tracer.start_as_current_span("request") as span:
        log.info("inside a span")
        envelope_trace_id = current_trace_id()

    (record,) = lines(stream)
    context = span.get_span_context()
    assert record["trace_id"] == format(context.trace_id, "032x") == envelope_trace_id
    assert record["span_id"] == format(context.span_id, "016x")


def test_without_a_span_logs_and_envelope_share_the_fallback_trace_id() -> None:
    stream = io.StringIO()
    configure_json_logging(stream=stream)
    with log_context(execution_id="e"):
        log.info("one")
        log.info("two")
        envelope_trace_id = current_trace_id()
    assert {r["trace_id"] for r in lines(stream)} == {envelope_trace_id}


@pytest.mark.anyio
async def test_context_survives_awaits_and_is_isolated_between_concurrent_tasks() -> None:
    stream = io.StringIO()
    configure_json_logging(stream=stream)

    async def request(execution_id: str) -> None:
        with log_context(execution_id=execution_id, model_id=f"model-{execution_id}"):
            for step in range(3):
                await asyncio.sleep(0)  # interleave with the other requests
                log.info("step %d", step)
                await asyncio.gather(child(execution_id))

    async def child(execution_id: str) -> None:
        await asyncio.sleep(0)
        assert current_execution_id() == execution_id
        log.info("child")

    await asyncio.gather(*(request(f"r{i}") for i in range(5)))

    records = lines(stream)
    assert len(records) == 5 * 3 * 2
    for record in records:
        assert record["model_id"] == f"model-{record['execution_id']}"
    per_request = {r["execution_id"]: r["trace_id"] for r in records}
    assert len(set(per_request.values())) == 5
    assert current_execution_id() is None


def test_nested_contexts_override_and_restore() -> None:
    with log_context(execution_id="outer", model_id="a"):
        with log_context(model_id="b"):
            assert get_log_context() == {
                "execution_id": "outer",
                "model_id": "b",
                "program_id": None,
            }
        assert get_log_context()["model_id"] == "a"
    assert get_log_context()["execution_id"] is None


def test_extra_fields_and_exceptions_are_included() -> None:
    stream = io.StringIO()
    configure_json_logging(stream=stream)
    try:
        raise ValueError("broken input")
    except ValueError:
        log.exception("failed", extra={"attempt": 2, "route": "/predict"})

    (record,) = lines(stream)
    assert record["attempt"] == 2
    assert record["route"] == "/predict"
    assert "ValueError: broken input" in record["exception"]


def test_reconfiguring_replaces_the_handler_instead_of_adding_one() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_json_logging(stream=first)
    configure_json_logging(stream=second, level="DEBUG")
    log.debug("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_root_option_makes_every_logger_json() -> None:
    stream = io.StringIO()
    configure_json_logging(stream=stream, root=True)
    logging.getLogger("some.other.library").warning("hello")
    log.info("ours")
    assert [r["logger"] for r in lines(stream)] == ["some.other.library", "llm_server.tests"]


def test_importing_the_library_configures_no_logging() -> None:
    code = (
        "import logging, llm_server, llm_server.core.telemetry._logging, "
        "llm_server.core.opentelemetry_integration, llm_server.core.pipeline;"
        "lib = logging.getLogger('llm_server');"
        "print(len(lib.handlers), len(logging.getLogger().handlers), lib.propagate)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["0", "0", "True"]
