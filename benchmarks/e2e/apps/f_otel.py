"""(F+SDK) The reference app with an OpenTelemetry SDK configured, exporting to memory.

What a host does in production, with in-memory doubles for the exporters: a
``TracerProvider`` whose ``BatchSpanProcessor`` feeds an ``InMemorySpanExporter`` and a
``MeterProvider`` with an ``InMemoryMetricReader``, set globally before the app is imported,
and ``OTEL_ENABLED=true``. A daemon thread drains both every two seconds, as a real exporter
would, so memory stays bounded.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTED = {"spans": 0, "metric_exports": 0}


def configure_sdk() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """Install the global providers (call before importing the app)."""
    os.environ["OTEL_ENABLED"] = "true"
    resource = Resource.create({"service.name": "llm-server-bench"})
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    threading.Thread(target=_drain, args=(exporter, reader), daemon=True).start()
    return exporter, reader


def _drain(exporter: InMemorySpanExporter, reader: InMemoryMetricReader) -> None:
    while True:
        time.sleep(2.0)
        EXPORTED["spans"] += len(exporter.get_finished_spans())
        exporter.clear()
        reader.get_metrics_data()
        EXPORTED["metric_exports"] += 1


def load_app() -> Any:
    """Configure the SDK, then import the reference app (cwd must be its folder)."""
    configure_sdk()
    import main  # the reference app, on sys.path

    return main.app
