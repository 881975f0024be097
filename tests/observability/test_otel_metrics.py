"""Metrics: GenAI histograms with the conventions' buckets, cost, pipelines, breakers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from _otel_helpers import (
    CallingStep,
    FailingStep,
    FakeBackend,
    FakeBreaker,
    metric_points,
    metric_units,
    output,
    write_pieces,
)
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics

from llm_server.core.circuit_breaker import CircuitBreaker
from llm_server.core.errors import CircuitOpenError, ProviderUnavailableError, StepError
from llm_server.core.model_interfaces import TokenCountMethod, TokenUsage
from llm_server.core.opentelemetry_integration import ModelCallInfo, Telemetry
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData

INFO = ModelCallInfo(
    provider="openai", request_model="gpt-4o-mini", server_address="127.0.0.1", server_port=8001
)
# The explicit bucket boundaries the GenAI conventions specify.
DURATION_BUCKETS = tuple(0.01 * 2**i for i in range(14))  # 0.01 ... 81.92
TOKEN_BUCKETS = tuple(4**i for i in range(14))  # 1 ... 67108864

# Everything a metric may be labelled with: bounded by configuration, never per request.
ALLOWED_METRIC_ATTRIBUTES = {
    gen_ai.GEN_AI_OPERATION_NAME,
    gen_ai.GEN_AI_PROVIDER_NAME,
    gen_ai.GEN_AI_REQUEST_MODEL,
    gen_ai.GEN_AI_RESPONSE_MODEL,
    gen_ai.GEN_AI_TOKEN_TYPE,
    "server.address",
    "server.port",
    "error.type",
    "llm_server.model_id",
    "llm_server.program_id",
    "llm_server.pipeline",
    "llm_server.step",
    "llm_server.outcome",
    "llm_server.circuit_breaker",
    "llm_server.circuit_breaker.state",
    "llm_server.circuit_breaker.from_state",
    "llm_server.circuit_breaker.to_state",
    "llm_server.fallback.from_model_id",
    "llm_server.fallback.to_model_id",
    "llm_server.fleet_decision",  # a bool
    "llm_server.rate_limit",  # a model id
}


def text() -> PipelineData:
    return PipelineData(media_type=MediaType.TEXT, content="hello")


def one(points: list[Any], **attributes: Any) -> Any:
    matches = [p for p in points if all(p.attributes.get(k) == v for k, v in attributes.items())]
    assert len(matches) == 1, [dict(p.attributes) for p in points]
    return matches[0]


@pytest.mark.anyio
async def test_operation_duration_uses_convention_name_unit_and_buckets(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    await telemetry.instrument(FakeBackend(), INFO).predict("q")

    points = metric_points(reader)[gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION]
    point = one(points)
    assert point.count == 1
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS
    assert dict(point.attributes) == {
        gen_ai.GEN_AI_OPERATION_NAME: "chat",
        gen_ai.GEN_AI_PROVIDER_NAME: "openai",
        gen_ai.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        gen_ai.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
        "server.address": "127.0.0.1",
        "server.port": 8001,
        "llm_server.model_id": "fast",
    }
    assert metric_units(reader)[gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION] == "s"


@pytest.mark.anyio
async def test_token_usage_records_input_and_output_with_convention_buckets(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    backend = telemetry.instrument(FakeBackend(), INFO)
    await backend.predict("q")
    await backend.predict("q")

    points = metric_points(reader)[gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE]
    input_point = one(points, **{gen_ai.GEN_AI_TOKEN_TYPE: "input"})
    output_point = one(points, **{gen_ai.GEN_AI_TOKEN_TYPE: "output"})
    assert (input_point.count, input_point.sum) == (2, 100)
    assert (output_point.count, output_point.sum) == (2, 300)
    assert tuple(input_point.explicit_bounds) == TOKEN_BUCKETS
    assert metric_units(reader)[gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE] == "{token}"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "usage", [None, TokenUsage(0, 0, 0, TokenCountMethod.CACHED)], ids=["unknown", "cache-hit"]
)
async def test_no_token_usage_is_recorded_when_nothing_was_counted(
    telemetry: Telemetry, reader: InMemoryMetricReader, usage: TokenUsage | None
) -> None:
    await telemetry.instrument(FakeBackend(result=output(usage=usage)), INFO).predict("q")
    assert gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE not in metric_points(reader)


@pytest.mark.anyio
async def test_cost_counter_sums_usd(telemetry: Telemetry, reader: InMemoryMetricReader) -> None:
    backend = telemetry.instrument(FakeBackend(result=output(cost_usd=0.25)), INFO)
    for _ in range(3):
        await backend.predict("q")

    point = one(metric_points(reader)["llm_server.client.cost_usd"])
    assert point.value == pytest.approx(0.75)
    assert metric_units(reader)["llm_server.client.cost_usd"] == "{USD}"


@pytest.mark.anyio
async def test_failed_call_duration_carries_error_type(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    backend = telemetry.instrument(FakeBackend(result=ProviderUnavailableError("503")), INFO)
    with pytest.raises(ProviderUnavailableError):
        await backend.predict("q")

    points = metric_points(reader)[gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION]
    assert one(points).attributes["error.type"] == "provider_unavailable"
    assert "llm_server.client.cost_usd" not in metric_points(reader)


@pytest.mark.anyio
async def test_pipeline_and_step_durations_by_outcome_at_the_full_detail(
    make_telemetry: Callable[..., Telemetry], reader: InMemoryMetricReader
) -> None:
    telemetry = make_telemetry(telemetry_detail="full")
    good = Pipeline(
        [CallingStep(telemetry.instrument(FakeBackend(), INFO))], name="qa", telemetry=telemetry
    )
    bad = Pipeline([FailingStep(KeyError("x"))], name="etl", telemetry=telemetry)
    await good.execute(text())
    with pytest.raises(StepError):
        await bad.execute(text())

    points = metric_points(reader)
    pipelines = points["llm_server.pipeline.duration"]
    assert one(pipelines, **{"llm_server.pipeline": "qa"}).attributes["llm_server.outcome"] == "ok"
    failed = one(pipelines, **{"llm_server.pipeline": "etl"})
    assert failed.attributes["llm_server.outcome"] == "error"
    assert failed.attributes["error.type"] == "step_failed"
    steps = points["llm_server.pipeline.step.duration"]
    assert one(steps, **{"llm_server.step": "ask"}).attributes["llm_server.pipeline"] == "qa"
    assert one(steps, **{"llm_server.step": "explode"}).count == 1


def test_breaker_state_gauge_reports_each_registered_breaker(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    primary, backup = FakeBreaker("fast"), FakeBreaker("backup", state="half-open")
    telemetry.observe_breakers({"fast": primary, "backup": backup})
    telemetry.observe_breakers([primary])  # registering twice is harmless

    def current() -> dict[str, str]:
        points = metric_points(reader)["llm_server.circuit_breaker.state"]
        return {
            p.attributes["llm_server.circuit_breaker"]: p.attributes[
                "llm_server.circuit_breaker.state"
            ]
            for p in points
            if p.value == 1
        }

    assert current() == {"fast": "closed", "backup": "half_open"}
    primary.state = "open"
    assert current() == {"fast": "open", "backup": "half_open"}


def test_breaker_gauge_reads_enum_states() -> None:
    from enum import StrEnum

    from llm_server.core.telemetry._signals import state_name

    class State(StrEnum):
        HALF_OPEN = "half_open"

    assert state_name(State.HALF_OPEN) == "half_open"
    assert state_name("HALF-OPEN") == "half_open"


def test_transitions_are_counted_and_refusals_read_from_the_breakers(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    listener = telemetry.listener
    listener.on_state_change(FakeBreaker("fast"), "closed", "open")
    breaker = CircuitBreaker(name="fast", failure_threshold=1)
    telemetry.observe_breakers([breaker])
    breaker.force_open()
    breaker.refuse()
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    listener.on_breaker_refusal("fast", 29.0)  # a span event only: the count is the breaker's

    points = metric_points(reader)
    transition = one(points["llm_server.circuit_breaker.transitions"])
    assert dict(transition.attributes) == {
        "llm_server.circuit_breaker": "fast",
        "llm_server.circuit_breaker.from_state": "closed",
        "llm_server.circuit_breaker.to_state": "open",
        "llm_server.fleet_decision": False,  # this process's own counts decided
    }
    assert one(points["llm_server.circuit_breaker.refusals"]).value == 2


def test_retry_and_fallback_counters(telemetry: Telemetry, reader: InMemoryMetricReader) -> None:
    listener = telemetry.listener
    listener.on_retry("fast", 1, ProviderUnavailableError("503"), 0.1)
    listener.on_retry("fast", 2, ProviderUnavailableError("503"), 0.2)
    listener.on_fallback("fast", "backup", ProviderUnavailableError("503"))

    points = metric_points(reader)
    assert one(points["llm_server.client.retries"]).value == 2
    assert one(points["llm_server.client.fallbacks"]).value == 1


@pytest.mark.anyio
async def test_every_metric_attribute_is_low_cardinality(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    backend = telemetry.instrument(FakeBackend(), INFO)
    pipeline = Pipeline([CallingStep(backend)], name="qa", telemetry=telemetry)
    for index in range(5):
        await pipeline.execute(PipelineData(media_type=MediaType.TEXT, content=f"q{index}"))
    telemetry.observe_breakers([FakeBreaker("fast")])
    telemetry.listener.on_retry("fast", 1, ProviderUnavailableError("503"), 0.1)
    telemetry.listener.on_fallback("fast", "backup", ProviderUnavailableError("503"))
    telemetry.listener.on_state_change(FakeBreaker("fast"), "closed", "open")

    points = metric_points(reader)
    keys = {key for series in points.values() for p in series for key in p.attributes}
    assert keys <= ALLOWED_METRIC_ATTRIBUTES
    # five requests with different inputs still make one series per metric and token type
    assert len(points[gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION]) == 1
    assert len(points[gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE]) == 2


@pytest.mark.anyio
async def test_default_detail_records_the_genai_metrics_and_cost_once_each(
    telemetry: Telemetry, reader: InMemoryMetricReader, exporter: InMemorySpanExporter
) -> None:
    waited = output(metadata={"lm_calls": 1, "connection_wait_ms": 250.0})
    backend = telemetry.instrument(FakeBackend(result=waited), INFO)
    await Pipeline([CallingStep(backend)], name="qa", telemetry=telemetry).execute(text())

    points = metric_points(reader)
    assert set(points) == {
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "llm_server.client.cost_usd",
    }
    assert one(points["gen_ai.client.operation.duration"]).count == 1
    assert sorted(p.sum for p in points["gen_ai.client.token.usage"]) == [50, 150]
    assert [s.name for s in exporter.get_finished_spans()] == ["chat gpt-4o-mini"]


@pytest.mark.anyio
async def test_only_the_call_duration_carries_an_exemplar_of_its_trace(
    telemetry: Telemetry, reader: InMemoryMetricReader, exporter: InMemorySpanExporter
) -> None:
    # The SDK's default filter (trace_based) samples an exemplar for a measurement made in a
    # sampled span: the duration links a slow bucket to its trace; tokens and cost, also on
    # the span, are recorded without one.
    await telemetry.instrument(FakeBackend(), INFO).predict("q")

    points = metric_points(reader)
    (span,) = exporter.get_finished_spans()
    (exemplar,) = one(points["gen_ai.client.operation.duration"]).exemplars
    assert exemplar.span_id == span.context.span_id
    assert [p.exemplars for p in points["gen_ai.client.token.usage"]] == [[], []]
    assert one(points["llm_server.client.cost_usd"]).exemplars == []


@pytest.mark.anyio
async def test_active_calls_go_up_during_a_call_and_back_down_at_the_full_detail(
    make_telemetry: Callable[..., Telemetry], reader: InMemoryMetricReader
) -> None:
    telemetry = make_telemetry(telemetry_detail="full")
    seen: list[float] = []

    def during() -> None:
        seen.extend(p.value for p in metric_points(reader)["llm_server.client.active_calls"])

    await telemetry.instrument(FakeBackend(before=during), INFO).predict("q")
    failing = telemetry.instrument(FakeBackend(result=ProviderUnavailableError("503")), INFO)
    with pytest.raises(ProviderUnavailableError):
        await failing.predict("q")
    assert seen == [1]
    assert [p.value for p in metric_points(reader)["llm_server.client.active_calls"]] == [0]


@pytest.mark.anyio
async def test_a_calls_wait_for_a_connection_is_a_histogram_and_a_span_attribute_at_full(
    make_telemetry: Callable[..., Telemetry],
    reader: InMemoryMetricReader,
    exporter: InMemorySpanExporter,
) -> None:
    telemetry = make_telemetry(telemetry_detail="full")
    waited = output(metadata={"lm_calls": 1, "connection_wait_ms": 250.0})
    await telemetry.instrument(FakeBackend(result=waited), INFO).predict("q")
    await telemetry.instrument(FakeBackend(), INFO).predict("q")  # not measured: not recorded
    point = one(metric_points(reader)["llm_server.client.connection_wait"])
    assert point.count == 1
    assert point.sum == pytest.approx(0.25)
    assert metric_units(reader)["llm_server.client.connection_wait"] == "s"
    first, second = exporter.get_finished_spans()
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["llm_server.connection_wait_s"] == pytest.approx(0.25)
    assert "llm_server.connection_wait_s" not in second.attributes


@pytest.mark.anyio
async def test_the_event_loop_lag_is_recorded_while_watched(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    watcher = asyncio.create_task(telemetry.watch_event_loop(interval_s=0.01))
    await asyncio.sleep(0.03)
    time.sleep(0.05)  # noqa: ASYNC251 -- on purpose: a blocking call makes the loop late
    await asyncio.sleep(0.03)
    watcher.cancel()
    (lag,) = metric_points(reader)["llm_server.event_loop.lag"]
    assert lag.count >= 2
    assert lag.max >= 0.03


@pytest.mark.anyio
async def test_watching_the_loop_with_telemetry_off_returns_at_once() -> None:
    await asyncio.wait_for(Telemetry.disabled().watch_event_loop(interval_s=0.01), timeout=1)


@pytest.mark.anyio
async def test_streamed_calls_record_the_chunk_histograms(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    from llm_server.core.streaming import stream_events

    pieces = write_pieces("one ", "two ", "three", pause_s=0.01)
    backend = telemetry.instrument(FakeBackend(before=pieces), INFO)
    [_ async for _ in stream_events(lambda: backend.predict("q"))]
    points = metric_points(reader)
    (first,) = points["gen_ai.client.operation.time_to_first_chunk"]
    (per_chunk,) = points["gen_ai.client.operation.time_per_output_chunk"]
    assert first.count == per_chunk.count == 1
    assert per_chunk.sum >= 0.01
