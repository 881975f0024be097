"""Model calls in traces left out by head sampling: every metric kept, the span unrecorded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _otel_helpers import FakeBackend, metric_points
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler

from llm_server.core.config import FrameworkSettings
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.opentelemetry_integration import ModelCallInfo, Telemetry

INFO = ModelCallInfo(provider="openai", request_model="gpt-4o-mini")


class _Sdk:
    def __init__(self, sampler: Sampler) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(sampler=sampler)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.telemetry = Telemetry(
            FrameworkSettings(_env_file=None, otel_enabled=True, telemetry_detail="genai"),
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
        )

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def unsampled() -> Iterator[_Sdk]:
    sdk = _Sdk(ParentBased(ALWAYS_OFF))
    yield sdk
    sdk.shutdown()


@pytest.fixture
def sampled() -> Iterator[_Sdk]:
    sdk = _Sdk(ALWAYS_ON)
    yield sdk
    sdk.shutdown()


def _current_during_the_call() -> tuple[FakeBackend, list[trace.Span]]:
    seen: list[trace.Span] = []
    backend = FakeBackend(before=lambda: seen.append(trace.get_current_span()))
    return backend, seen


@pytest.mark.anyio
async def test_unsampled_call_is_current_and_records_every_metric_without_a_span(
    unsampled: _Sdk,
) -> None:
    backend, seen = _current_during_the_call()
    instrumented = unsampled.telemetry.instrument(backend, INFO)
    tracer = unsampled.tracer_provider.get_tracer("host")
    with tracer.start_as_current_span("POST /predict") as request_span:
        metrics = PerformanceMetrics(attach=True)
        await instrumented.predict({"question": "q"})
    parent = request_span.get_span_context()
    assert not request_span.is_recording()
    inside = seen[0].get_span_context()
    assert (inside.trace_id, inside.is_valid) == (parent.trace_id, True)
    assert inside.span_id != parent.span_id  # the call's own (unrecorded) span
    assert metrics.trace_id == format(parent.trace_id, "032x")
    assert unsampled.exporter.get_finished_spans() == ()
    points = metric_points(unsampled.reader)
    assert len(points["gen_ai.client.operation.duration"]) == 1
    duration = points["gen_ai.client.operation.duration"][0]
    assert duration.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert {p.attributes["gen_ai.token.type"] for p in points["gen_ai.client.token.usage"]} == {
        "input",
        "output",
    }


@pytest.mark.anyio
async def test_sampled_call_is_current_and_carries_its_response_attributes(
    sampled: _Sdk,
) -> None:
    backend, seen = _current_during_the_call()
    instrumented = sampled.telemetry.instrument(backend, INFO)
    tracer = sampled.tracer_provider.get_tracer("host")
    with tracer.start_as_current_span("POST /predict"):
        await instrumented.predict({"question": "q"})
    call = next(s for s in sampled.exporter.get_finished_spans() if s.name == "chat gpt-4o-mini")
    assert seen[0].get_span_context() == call.get_span_context()
    assert dict(call.attributes or {})["gen_ai.usage.output_tokens"] == 150
