"""Fixtures for the observability tests: an SDK with in-memory exporter and reader."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_server.core.config import FrameworkSettings
from llm_server.core.opentelemetry_integration import Telemetry, set_telemetry
from llm_server.core.telemetry._redaction import clear_registered_secrets

# Settings given explicitly, so the developer's environment or .env cannot change a test.
SETTINGS_DEFAULTS: dict[str, Any] = {
    "otel_enabled": True,
    "otel_capture_message_content": False,
    "otel_content_max_length": 2000,
    "otel_llm_attributes": None,
    "telemetry_detail": "genai",
}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def make_telemetry(
    tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> Callable[..., Telemetry]:
    """Build a Telemetry on the in-memory SDK; keyword arguments override settings."""

    def make(**settings: Any) -> Telemetry:
        values = {**SETTINGS_DEFAULTS, **settings}
        return Telemetry(
            FrameworkSettings(**values),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )

    return make


@pytest.fixture
def telemetry(make_telemetry: Callable[..., Telemetry]) -> Telemetry:
    return make_telemetry()


@pytest.fixture(autouse=True)
def _isolate_globals() -> Iterator[None]:
    """Reset the process-wide telemetry, secrets and logging handlers after each test."""
    library = logging.getLogger("llm_server")
    root = logging.getLogger()
    saved = (list(library.handlers), library.level, library.propagate)
    saved_root = (list(root.handlers), root.level)
    yield
    set_telemetry(None)
    clear_registered_secrets()
    library.handlers[:] = saved[0]
    library.setLevel(saved[1])
    library.propagate = saved[2]
    root.handlers[:] = saved_root[0]
    root.setLevel(saved_root[1])
