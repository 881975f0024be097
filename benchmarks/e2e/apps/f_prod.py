"""(F+SDK prod) The reference app with the documented production profile around it.

The host setup of ``docs/how-to/observability.md`` ("A production profile"), with in-memory
doubles for the exporters as in F+SDK: head sampling (``ParentBased(TraceIdRatioBased(0.1))``),
the exemplar filter off, FastAPI's operation spans off (its server span and HTTP metrics stay),
and the library at its default detail level (``genai``). The reference app is imported as
written; FastAPI has no public way to change an app's telemetry options after it is built, so
the one option is set on its configuration before the first request, which is what
``FastAPI(..., telemetry={"operation_spans": False})`` would have set.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from e2e.apps.f_otel import _drain

SAMPLED_SHARE = 0.1


def configure_production_sdk() -> None:
    """Install the production profile's global providers (call before importing the app)."""
    os.environ["OTEL_ENABLED"] = "true"
    os.environ.pop("LLM_SERVER_TELEMETRY_DETAIL", None)  # the default: genai
    resource = Resource.create({"service.name": "llm-server-bench"})
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(SAMPLED_SHARE))
    )
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(
        MeterProvider(
            resource=resource,
            metric_readers=[reader],
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
    )
    threading.Thread(target=_drain, args=(exporter, reader), daemon=True).start()


def load_app() -> Any:
    """Configure the profile, then import the reference app (cwd must be its folder)."""
    configure_production_sdk()
    import main  # the reference app, on sys.path

    main.app._telemetry["operation_spans"] = False  # private: see the module docstring
    return main.app
