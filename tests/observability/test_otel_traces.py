"""Spans: model calls on the GenAI conventions, pipelines and steps, events, trace ids."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from _otel_helpers import CallingStep, FailingStep, FakeBackend, output, span_named, write_pieces
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import SpanKind, StatusCode

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import RateLimitedError, StepError
from llm_server.core.model_interfaces import TokenCountMethod, TokenUsage
from llm_server.core.opentelemetry_integration import (
    InstrumentedBackend,
    ModelCallInfo,
    Telemetry,
    current_trace_id,
)
from llm_server.core.pipeline import Pipeline
from llm_server.core.protocols import ModelBackend
from llm_server.core.telemetry import log_context
from llm_server.core.telemetry._observation import (
    notify_breaker_refusal,
    notify_fallback,
    notify_retry,
)
from llm_server.core.types import MediaType, PipelineData

INFO = ModelCallInfo(
    provider="openai",
    request_model="gpt-4o-mini",
    max_tokens=256,
    temperature=0.2,
    server_address="127.0.0.1",
    server_port=8001,
)


def text(value: str = "What is the capital of France?") -> PipelineData:
    return PipelineData(media_type=MediaType.TEXT, content=value)


@pytest.mark.anyio
async def test_model_call_span_follows_the_genai_conventions(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    backend = telemetry.instrument(FakeBackend(), INFO)
    await backend.predict({"question": "q"})

    span = span_named(exporter.get_finished_spans(), "chat gpt-4o-mini")
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    attributes = dict(span.attributes or {})
    expected = {
        gen_ai.GEN_AI_OPERATION_NAME: "chat",
        gen_ai.GEN_AI_PROVIDER_NAME: "openai",
        gen_ai.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        gen_ai.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
        gen_ai.GEN_AI_USAGE_INPUT_TOKENS: 50,
        gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS: 150,
        gen_ai.GEN_AI_REQUEST_MAX_TOKENS: 256,
        gen_ai.GEN_AI_REQUEST_TEMPERATURE: 0.2,
        gen_ai.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        server_attributes.SERVER_ADDRESS: "127.0.0.1",
        server_attributes.SERVER_PORT: 8001,
    }
    assert {key: attributes.get(key) for key in expected} == expected
    assert error_attributes.ERROR_TYPE not in attributes


@pytest.mark.anyio
async def test_optional_request_attributes_are_left_out_when_unset(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    info = ModelCallInfo(provider="anthropic", request_model="claude-sonnet-4")
    backend = telemetry.instrument(FakeBackend(result=output(response_model=None)), info)
    await backend.predict("hi")

    attributes = span_named(exporter.get_finished_spans(), "chat claude-sonnet-4").attributes
    assert attributes is not None
    for absent in (
        gen_ai.GEN_AI_REQUEST_MAX_TOKENS,
        gen_ai.GEN_AI_REQUEST_TEMPERATURE,
        gen_ai.GEN_AI_RESPONSE_MODEL,
        server_attributes.SERVER_ADDRESS,
        server_attributes.SERVER_PORT,
    ):
        assert absent not in attributes


@pytest.mark.anyio
async def test_usage_unknown_or_cached_sets_no_token_attributes(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    cached = TokenUsage(0, 0, 0, TokenCountMethod.CACHED)
    await telemetry.instrument(FakeBackend(result=output(usage=cached)), INFO).predict("a")
    await telemetry.instrument(FakeBackend(result=output(usage=None)), INFO).predict("b")

    for span in exporter.get_finished_spans():
        assert gen_ai.GEN_AI_USAGE_INPUT_TOKENS not in (span.attributes or {})
        assert "llm.usage.total_tokens" not in (span.attributes or {})


@pytest.mark.anyio
@pytest.mark.parametrize(
    "settings",
    [{"telemetry_detail": "full"}, {"otel_llm_attributes": True}],
    ids=["full-detail", "asked-for-at-the-default-detail"],
)
async def test_legacy_llm_attributes_come_with_the_full_detail_or_on_request(
    make_telemetry: Callable[..., Telemetry],
    exporter: InMemorySpanExporter,
    settings: dict[str, Any],
) -> None:
    telemetry = make_telemetry(**settings)
    await telemetry.instrument(FakeBackend(), INFO).predict("hi")

    attributes = exporter.get_finished_spans()[0].attributes or {}
    assert attributes["llm.request.type"] == "chat"
    assert attributes["llm.request.model"] == "gpt-4o-mini"
    assert attributes["llm.usage.prompt_tokens"] == 50
    assert attributes["llm.usage.completion_tokens"] == 150
    assert attributes["llm.usage.total_tokens"] == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    "settings",
    [{}, {"telemetry_detail": "full", "otel_llm_attributes": False}],
    ids=["default-detail", "turned-off-at-full-detail"],
)
async def test_legacy_llm_attributes_are_left_out_by_default_or_on_request(
    make_telemetry: Callable[..., Telemetry],
    exporter: InMemorySpanExporter,
    settings: dict[str, Any],
) -> None:
    telemetry = make_telemetry(**settings)
    await telemetry.instrument(FakeBackend(), INFO).predict("hi")

    attributes = exporter.get_finished_spans()[0].attributes or {}
    assert not [key for key in attributes if key.startswith("llm.")]
    assert attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == 50


@pytest.mark.anyio
async def test_failed_call_sets_error_type_and_status_and_reraises_the_same_error(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    error = RateLimitedError("slow down", model_id="fast", retry_after_s=2.0)
    backend = telemetry.instrument(FakeBackend(result=error), INFO)

    with pytest.raises(RateLimitedError) as caught:
        await backend.predict("hi")

    assert caught.value is error
    span = exporter.get_finished_spans()[0]
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})[error_attributes.ERROR_TYPE] == "rate_limited"
    (event,) = [e for e in span.events if e.name == "exception"]
    assert (event.attributes or {})["exception.type"] == "llm_server.core.errors.RateLimitedError"
    assert (event.attributes or {})["exception.message"] == "slow down"


@pytest.mark.anyio
async def test_foreign_error_type_is_its_class_name(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    backend = telemetry.instrument(FakeBackend(result=TimeoutError("late")), INFO)
    with pytest.raises(TimeoutError):
        await backend.predict("hi")
    assert (exporter.get_finished_spans()[0].attributes or {})["error.type"] == "TimeoutError"


@pytest.mark.anyio
async def test_cancelled_call_ends_its_span_and_stays_cancelled(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    started = asyncio.Event()

    class Hanging(FakeBackend):
        async def predict(self, input: object) -> object:  # type: ignore[override]
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    task = asyncio.create_task(telemetry.instrument(Hanging(), INFO).predict("hi"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    span = exporter.get_finished_spans()[0]
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "asyncio.exceptions.CancelledError"


@pytest.mark.anyio
async def test_pipeline_step_and_model_spans_nest_at_the_full_detail(
    make_telemetry: Callable[..., Telemetry], exporter: InMemorySpanExporter
) -> None:
    telemetry = make_telemetry(telemetry_detail="full")
    backend = telemetry.instrument(FakeBackend(), INFO)
    pipeline = Pipeline([CallingStep(backend)], name="qa", telemetry=telemetry)
    await pipeline.execute(text())

    spans = exporter.get_finished_spans()
    pipeline_span = span_named(spans, "pipeline qa")
    step_span = span_named(spans, "step ask")
    model_span = span_named(spans, "chat gpt-4o-mini")
    assert pipeline_span.parent is None
    assert step_span.parent is not None
    assert step_span.parent.span_id == pipeline_span.context.span_id
    assert model_span.parent is not None
    assert model_span.parent.span_id == step_span.context.span_id
    assert {s.context.trace_id for s in spans} == {pipeline_span.context.trace_id}
    assert (step_span.attributes or {})["llm_server.step"] == "ask"
    assert (step_span.attributes or {})["llm_server.step.index"] == 0


@pytest.mark.anyio
async def test_at_the_default_detail_a_pipeline_records_only_its_model_call_span(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    backend = telemetry.instrument(FakeBackend(), INFO)
    await Pipeline([CallingStep(backend)], name="qa", telemetry=telemetry).execute(text())
    with pytest.raises(StepError, match="bad row"):
        await Pipeline(
            [FailingStep(ValueError("bad row"))], name="etl", telemetry=telemetry
        ).execute(text())

    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["chat gpt-4o-mini"]
    attributes = spans[0].attributes or {}
    assert attributes[gen_ai.GEN_AI_OPERATION_NAME] == "chat"
    assert attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == 150
    assert "llm_server.connection_wait_s" not in attributes


@pytest.mark.anyio
async def test_failing_step_marks_step_and_pipeline_spans_and_keeps_step_error(
    make_telemetry: Callable[..., Telemetry], exporter: InMemorySpanExporter
) -> None:
    telemetry = make_telemetry(telemetry_detail="full")
    pipeline = Pipeline([FailingStep(ValueError("bad row"))], name="etl", telemetry=telemetry)

    with pytest.raises(StepError, match="bad row") as caught:
        await pipeline.execute(text())

    assert isinstance(caught.value.__cause__, ValueError)
    spans = exporter.get_finished_spans()
    for name in ("step explode", "pipeline etl"):
        span = span_named(spans, name)
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "step_failed"


@pytest.mark.anyio
async def test_content_is_not_captured_by_default(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    await telemetry.instrument(FakeBackend(), INFO).predict({"question": "secret plans"})

    attributes = exporter.get_finished_spans()[0].attributes or {}
    assert gen_ai.GEN_AI_INPUT_MESSAGES not in attributes
    assert gen_ai.GEN_AI_OUTPUT_MESSAGES not in attributes
    assert "secret plans" not in json.dumps(dict(attributes), default=str)


@pytest.mark.anyio
async def test_content_capture_opt_in_records_truncated_messages(
    make_telemetry: Callable[..., Telemetry], exporter: InMemorySpanExporter
) -> None:
    telemetry = make_telemetry(otel_capture_message_content=True, otel_content_max_length=12)
    backend = telemetry.instrument(FakeBackend(result=output(content="x" * 100)), INFO)
    await backend.predict("What is the capital of France?")

    attributes = exporter.get_finished_spans()[0].attributes or {}
    (input_message,) = json.loads(str(attributes[gen_ai.GEN_AI_INPUT_MESSAGES]))
    (output_message,) = json.loads(str(attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES]))
    assert input_message["role"] == "user"
    assert input_message["parts"] == [{"type": "text", "content": "What is the "}]
    assert output_message["parts"][0]["content"] == "x" * 12
    assert output_message["finish_reason"] == "stop"


def test_content_capture_follows_the_conventions_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    assert FrameworkSettings(_env_file=None).otel_capture_message_content is True  # type: ignore[call-arg]


@pytest.mark.anyio
async def test_request_events_inside_a_model_call_land_on_its_span(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    def reliability_events() -> None:  # what the wrappers inside the instrumented call send
        notify_retry("fast", 1, RateLimitedError("429"), 0.5)
        notify_breaker_refusal("fast", 12.0)
        notify_fallback("fast", "backup", RateLimitedError("429"))
        telemetry.listener.on_state_change(_Breaker("fast"), "closed", "open")

    backend = telemetry.instrument(FakeBackend(before=reliability_events), INFO)
    await backend.predict("hi")

    events = {e.name: dict(e.attributes or {}) for e in exporter.get_finished_spans()[0].events}
    assert events["llm_server.retry"] == {
        "llm_server.model_id": "fast",
        "llm_server.retry.attempt": 1,
        "llm_server.retry.delay_s": 0.5,
        "error.type": "rate_limited",
    }
    assert events["llm_server.circuit_breaker.refused"] == {
        "llm_server.circuit_breaker": "fast",
        "llm_server.retry_after_s": 12.0,
    }
    assert events["llm_server.fallback"]["llm_server.fallback.to_model_id"] == "backup"
    assert (
        events["llm_server.circuit_breaker.transition"]["llm_server.circuit_breaker.to_state"]
        == "open"
    )
    notify_retry("fast", 1, RateLimitedError("429"), 0.5)  # outside the call: no observer
    assert len(exporter.get_finished_spans()[0].events) == 4


@pytest.mark.anyio
async def test_fallback_answer_names_the_model_that_answered(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    await telemetry.instrument(FakeBackend(result=output(model_id="backup")), INFO).predict("q")
    attributes = exporter.get_finished_spans()[0].attributes or {}
    assert attributes["llm_server.model_id"] == "fast"
    assert attributes["llm_server.response.model_id"] == "backup"


@pytest.mark.anyio
async def test_instrumented_backend_is_a_transparent_model_backend(telemetry: Telemetry) -> None:
    inner = FakeBackend()
    backend = InstrumentedBackend(inner, telemetry=telemetry, call_info=INFO)

    assert isinstance(backend, ModelBackend)
    backend.program_metadata = {"id": "predictor"}
    assert inner.program_metadata == {"id": "predictor"}
    assert backend.model_id == "fast"
    assert backend.get_lm_history() == ["history"]
    assert backend.wrapped is inner
    assert await backend.predict("q") is inner.result


@pytest.mark.parametrize(
    ("model_name", "api_base", "expected"),
    [
        ("openai/gpt-4o", "http://127.0.0.1:8001/v1", ("openai", "gpt-4o", "127.0.0.1", 8001)),
        ("openai/gpt-4o", None, ("openai", "gpt-4o", "api.openai.com", 443)),
        ("anthropic/haiku", "https://proxy.example", ("anthropic", "haiku", "proxy.example", 443)),
        ("bedrock/anthropic.claude-v2", None, ("aws.bedrock", "anthropic.claude-v2", None, None)),
        ("azure/dep", "https://x.azure.com", ("azure.ai.openai", "dep", "x.azure.com", 443)),
        ("gpt-4o", None, ("openai", "gpt-4o", "api.openai.com", 443)),
    ],
)
def test_call_info_from_model_name(
    model_name: str, api_base: str | None, expected: tuple[object, ...]
) -> None:
    info = ModelCallInfo.from_model_name(model_name, api_base=api_base)
    assert (info.provider, info.request_model, info.server_address, info.server_port) == expected


def test_call_info_from_model_config_reads_limits_and_temperature() -> None:
    from llm_server.core.model_config import ModelConfig

    config = ModelConfig(
        model_name="openai/gpt-4o-mini", max_tokens=99, additional_params={"temperature": 0}
    )
    info = ModelCallInfo.from_model_config(config, program_id="predictor")
    assert (info.max_tokens, info.temperature, info.program_id) == (99, 0.0, "predictor")


HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.mark.anyio
async def test_trace_id_is_the_request_trace_when_tracing(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    seen: list[str] = []

    class Recording(FakeBackend):
        async def predict(self, input: object) -> object:  # type: ignore[override]
            seen.append(current_trace_id())
            return output()

    await telemetry.instrument(Recording(), INFO).predict("q")
    assert seen == [format(exporter.get_finished_spans()[0].context.trace_id, "032x")]


def test_trace_id_without_tracing_is_random_outside_and_stable_inside_log_context() -> None:
    outside = {current_trace_id() for _ in range(3)}
    assert len(outside) == 3
    assert all(HEX32.match(t) for t in outside)
    with log_context(execution_id="e1"):
        first = current_trace_id()
        with log_context(model_id="m"):
            assert current_trace_id() == first
    with log_context(execution_id="e2"):
        assert current_trace_id() != first


class _Breaker:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("detail", "child"), [("genai", "chat gpt-4o-mini"), ("full", "pipeline qa")]
)
async def test_request_span_gives_the_whole_request_one_trace(
    make_telemetry: Callable[..., Telemetry],
    exporter: InMemorySpanExporter,
    detail: str,
    child: str,
) -> None:
    telemetry = make_telemetry(telemetry_detail=detail)
    backend = telemetry.instrument(FakeBackend(), INFO)
    pipeline = Pipeline([CallingStep(backend)], name="qa", telemetry=telemetry)

    with telemetry.request_span("POST /predict", attributes={"http.route": "/predict"}):
        envelope_trace_id = current_trace_id()  # e.g. read by PerformanceMetrics up front
        await pipeline.execute(text())

    spans = exporter.get_finished_spans()
    request = span_named(spans, "POST /predict")
    assert request.kind is SpanKind.SERVER
    assert (request.attributes or {})["http.route"] == "/predict"
    parent = span_named(spans, child).parent
    assert parent is not None
    assert parent.span_id == request.context.span_id
    assert {format(s.context.trace_id, "032x") for s in spans} == {envelope_trace_id}


def test_under_a_host_span_the_request_span_is_the_hosts(
    make_telemetry: Callable[..., Telemetry],
    exporter: InMemorySpanExporter,
    tracer_provider: TracerProvider,
) -> None:
    telemetry = make_telemetry(telemetry_detail="full")
    host_tracer = tracer_provider.get_tracer("host")
    with (
        host_tracer.start_as_current_span("GET /") as host,
        telemetry.request_span("inner"),
        telemetry.pipeline_span("qa"),
    ):
        pass
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["pipeline qa", "GET /"]  # no second request span
    assert span_named(spans, "pipeline qa").parent.span_id == host.get_span_context().span_id


@pytest.mark.anyio
async def test_a_streamed_call_has_stream_attributes_events_and_chunk_timings(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    from llm_server.core.streaming import stream_events

    pieces = write_pieces("one ", "two ", "three")
    backend = telemetry.instrument(FakeBackend(before=pieces), INFO)
    found = [event async for event in stream_events(lambda: backend.predict("q"))]
    assert len(found) == 4  # three pieces and the end
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {})["gen_ai.request.stream"] is True
    (first,) = [e for e in span.events if e.name == "llm_server.stream.first_chunk"]
    assert (first.attributes or {})["llm_server.stream.time_to_first_chunk_s"] >= 0
