"""Plant keys, run logging and tracing through success and failure, and search for them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from _otel_helpers import CallingStep, FailingStep, FakeBackend, output
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_server.core.errors import ProviderAuthError, StepError
from llm_server.core.opentelemetry_integration import ModelCallInfo, Telemetry
from llm_server.core.pipeline import Pipeline
from llm_server.core.telemetry import configure_json_logging, log_context, register_secret
from llm_server.core.types import MediaType, PipelineData

# One key with a recognisable shape, one without (only registration can catch it).
SHAPED_KEY = "sk-ant-api03-PLANTEDkey1234567890abcdef"
OPAQUE_KEY = "zq-custom-secret-998877"
INFO = ModelCallInfo(provider="anthropic", request_model="claude-3-5-haiku")
log = logging.getLogger("llm_server.tests.leaks")


class LoggingStep:
    """A step that logs the keys the way careless code would."""

    name = "chatty"
    accepted_media_types = (MediaType.TEXT,)

    async def process(self, data: PipelineData) -> PipelineData:
        log.info("calling provider with api_key=%s", SHAPED_KEY)
        log.warning("headers: %s", {"Authorization": f"Bearer {OPAQUE_KEY}"})
        log.info("opaque key %s", OPAQUE_KEY, extra={"key_in_extra": OPAQUE_KEY})
        return data


def everything_in(spans: tuple[Any, ...]) -> str:
    """Every name, attribute, event and status text of every span, as one string."""
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.append(json.dumps(dict(span.attributes or {}), default=str))
        parts.append(str(span.status.description))
        for event in span.events:
            parts.append(event.name)
            parts.append(json.dumps(dict(event.attributes or {}), default=str))
    return "\n".join(parts)


@pytest.mark.anyio
async def test_planted_keys_never_reach_logs_spans_or_error_messages(
    make_telemetry: Callable[..., Telemetry], exporter: InMemorySpanExporter
) -> None:
    register_secret(OPAQUE_KEY)
    stream = io.StringIO()
    configure_json_logging(stream=stream, level=logging.DEBUG)
    telemetry = make_telemetry(otel_capture_message_content=True)
    errors: list[str] = []

    with log_context(execution_id="leak-test"):
        # 1. success, with the keys in the prompt and the completion (captured content)
        answering = telemetry.instrument(
            FakeBackend(result=output(content=f"echo {OPAQUE_KEY} {SHAPED_KEY}")), INFO
        )
        ok = Pipeline([LoggingStep(), CallingStep(answering)], name="ok", telemetry=telemetry)
        await ok.execute(PipelineData(media_type=MediaType.TEXT, content=f"key {SHAPED_KEY}"))

        # 2. a provider error whose message holds the key
        rejecting = telemetry.instrument(
            FakeBackend(result=ProviderAuthError(f"401: invalid x-api-key {SHAPED_KEY}")), INFO
        )
        try:
            await Pipeline([CallingStep(rejecting)], name="auth", telemetry=telemetry).execute(
                PipelineData(media_type=MediaType.TEXT, content="q")
            )
        except ProviderAuthError:
            log.exception("model call failed")

        # 3. an unexpected step error whose message holds the opaque key
        failing = FailingStep(RuntimeError(f"connection string had {OPAQUE_KEY}"))
        try:
            await Pipeline([failing], name="boom", telemetry=telemetry).execute(
                PipelineData(media_type=MediaType.TEXT, content="q")
            )
        except StepError as exc:
            errors.append(str(exc))
            log.error("step failed: %s", exc, exc_info=True)

        telemetry.listener.on_retry("fast", 1, RuntimeError(SHAPED_KEY), 0.1)

    logged = stream.getvalue()
    traced = everything_in(exporter.get_finished_spans())
    # The scenario really ran: logs, spans, exceptions and captured content are all there.
    assert logged.count("\n") >= 5
    assert "Traceback" in logged
    assert "gen_ai.input.messages" in traced
    assert "exception.stacktrace" in traced
    assert "[REDACTED]" in logged
    assert "[REDACTED]" in traced
    assert errors
    assert errors[0].startswith("pipeline 'boom': step 0 (explode) failed")
    for key in (SHAPED_KEY, OPAQUE_KEY, "PLANTEDkey"):
        assert key not in logged
        assert key not in traced
        assert key not in errors[0]
