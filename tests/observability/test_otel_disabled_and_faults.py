"""Disabled telemetry emits nothing; broken telemetry never breaks a request."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from _otel_helpers import CallingStep, FakeBackend, FakeBreaker, metric_points, output
from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import ProviderUnavailableError, StepError
from llm_server.core.opentelemetry_integration import (
    InstrumentedBackend,
    ModelCallInfo,
    Telemetry,
    get_telemetry,
    set_telemetry,
)
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData

INFO = ModelCallInfo(provider="openai", request_model="gpt-4o-mini")


def text() -> PipelineData:
    return PipelineData(media_type=MediaType.TEXT, content="hello")


async def exercise(telemetry: Telemetry) -> None:
    """Use every entry point once, including a failing model call."""
    backend = telemetry.instrument(FakeBackend(), INFO)
    pipeline = Pipeline([CallingStep(backend)], name="qa", telemetry=telemetry)
    await pipeline.execute(text())
    failing = telemetry.instrument(FakeBackend(result=ProviderUnavailableError("503")), INFO)
    with pytest.raises(ProviderUnavailableError):
        await failing.predict("q")
    telemetry.observe_breakers([FakeBreaker("fast")])
    listener = telemetry.listener
    listener.on_retry("fast", 1, ProviderUnavailableError("503"), 0.1)
    listener.on_fallback("fast", "backup", ProviderUnavailableError("503"))
    listener.on_state_change(FakeBreaker("fast"), "closed", "open")
    listener.on_breaker_refusal("fast", 30.0)


@pytest.mark.anyio
async def test_disabled_telemetry_emits_nothing_even_with_an_sdk(
    make_telemetry: Callable[..., Telemetry],
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
) -> None:
    telemetry = make_telemetry(otel_enabled=False)
    assert telemetry.enabled is False

    await exercise(telemetry)

    assert exporter.get_finished_spans() == ()
    assert metric_points(reader) == {}


@pytest.mark.anyio
@pytest.mark.parametrize(("detail", "spans"), [("genai", 2), ("full", 4)])
async def test_enabled_telemetry_emits_through_the_same_exercise(
    make_telemetry: Callable[..., Telemetry],
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    detail: str,
    spans: int,
) -> None:
    # The control for the test above: the same calls do emit when enabled (two model-call
    # spans; the pipeline and step spans at the full detail level only).
    await exercise(make_telemetry(telemetry_detail=detail))
    assert len(exporter.get_finished_spans()) == spans
    assert "llm_server.circuit_breaker.state" in metric_points(reader)


@pytest.mark.anyio
async def test_disabled_instrumented_backend_forwards_untouched() -> None:
    inner = FakeBackend()
    backend = InstrumentedBackend(inner, telemetry=Telemetry.disabled())
    assert await backend.predict("q") is inner.result
    assert inner.inputs == ["q"]


@pytest.mark.anyio
async def test_pipelines_use_the_process_wide_telemetry(
    make_telemetry: Callable[..., Telemetry], exporter: InMemorySpanExporter
) -> None:
    telemetry = make_telemetry(telemetry_detail="full")
    pipeline = Pipeline([CallingStep(FakeBackend())], name="global")
    assert get_telemetry().enabled is False
    await pipeline.execute(text())
    assert exporter.get_finished_spans() == ()

    set_telemetry(telemetry)
    await pipeline.execute(text())
    assert {s.name for s in exporter.get_finished_spans()} == {"pipeline global", "step ask"}

    set_telemetry(None)
    assert get_telemetry().enabled is False


@pytest.mark.anyio
async def test_enabled_without_an_sdk_uses_the_api_no_ops() -> None:
    telemetry = Telemetry(
        FrameworkSettings(otel_enabled=True),
        tracer_provider=NoOpTracerProvider(),
        meter_provider=NoOpMeterProvider(),
    )
    assert telemetry.enabled is True
    await exercise(telemetry)


class ExplodingProcessor(SpanProcessor):
    """A span processor that fails on every hook (a buggy vendor plugin)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        raise RuntimeError("processor on_start failed")

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("processor on_end failed")


class ExplodingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionError("collector down")


class _ExplodingInstrument:
    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"instrument {name} failed")

        return fail


class ExplodingMeter(metrics.NoOpMeter):
    def create_histogram(self, *args: Any, **kwargs: Any) -> Any:
        return _ExplodingInstrument()

    def create_counter(self, *args: Any, **kwargs: Any) -> Any:
        return _ExplodingInstrument()


class ExplodingMeterProvider(NoOpMeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> metrics.Meter:
        return ExplodingMeter(name)


@pytest.mark.anyio
@pytest.mark.parametrize("failure", ["processor", "exporter"])
async def test_failing_span_pipeline_never_breaks_a_call(
    failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider = TracerProvider()
    if failure == "processor":
        provider.add_span_processor(ExplodingProcessor())
    else:
        provider.add_span_processor(SimpleSpanProcessor(ExplodingExporter()))
    telemetry = Telemetry(
        FrameworkSettings(otel_enabled=True),
        tracer_provider=provider,
        meter_provider=ExplodingMeterProvider(),
    )

    inner = FakeBackend()
    backend = telemetry.instrument(inner, INFO)
    pipeline = Pipeline([CallingStep(backend)], name="qa", telemetry=telemetry)
    result = await pipeline.execute(text())
    assert result.content == str(output().content)

    failing = telemetry.instrument(FakeBackend(result=ProviderUnavailableError("503")), INFO)
    with pytest.raises(ProviderUnavailableError, match="503"):
        await failing.predict("q")
    with pytest.raises(ProviderUnavailableError):  # our errors pass the pipeline unchanged
        await Pipeline([CallingStep(failing)], name="bad", telemetry=telemetry).execute(text())
    with pytest.raises(StepError):
        await Pipeline(
            [CallingStep(FakeBackend(result=KeyError("k")))], name="worse", telemetry=telemetry
        ).execute(text())
    telemetry.listener.on_retry("fast", 1, ProviderUnavailableError("503"), 0.1)
    telemetry.listener.on_fallback("fast", "backup", ProviderUnavailableError("503"))
    provider.shutdown()


def test_a_breaker_that_cannot_report_its_state_is_skipped(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    class Broken:
        name = "broken"

        @property
        def state(self) -> str:
            raise RuntimeError("store unreachable")

    telemetry.observe_breakers([Broken(), FakeBreaker("fine")])
    points = metric_points(reader)["llm_server.circuit_breaker.state"]
    assert {p.attributes["llm_server.circuit_breaker"] for p in points} == {"fine"}


@pytest.mark.anyio
async def test_a_telemetry_failure_is_warned_about_once_per_site(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from llm_server.core.telemetry import _signals as _otel_signals

    _otel_signals._reported.clear()
    telemetry = Telemetry(
        FrameworkSettings(otel_enabled=True),
        tracer_provider=NoOpTracerProvider(),
        meter_provider=ExplodingMeterProvider(),
    )
    backend = telemetry.instrument(FakeBackend(), INFO)
    with caplog.at_level("DEBUG", logger="llm_server.telemetry"):
        for _ in range(3):
            await backend.predict("q")

    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "annotate model span" in warnings[0].getMessage()
    assert len([r for r in caplog.records if r.levelname == "DEBUG"]) == 2


class OldApiMeter(metrics.NoOpMeter):
    """A meter from an API release without ``explicit_bucket_boundaries_advisory``."""

    def create_histogram(  # type: ignore[override]
        self, name: str, unit: str = "", description: str = ""
    ) -> metrics.Histogram:
        return super().create_histogram(name, unit, description)


class OldApiMeterProvider(NoOpMeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> metrics.Meter:
        return OldApiMeter(name)


@pytest.mark.anyio
async def test_an_api_without_bucket_advice_still_gets_its_histograms() -> None:
    telemetry = Telemetry(
        FrameworkSettings(otel_enabled=True),
        tracer_provider=NoOpTracerProvider(),
        meter_provider=OldApiMeterProvider(),
    )
    assert telemetry.enabled
    assert await telemetry.instrument(FakeBackend(), INFO).predict("q") == output()
