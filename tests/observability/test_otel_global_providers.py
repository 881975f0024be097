"""Telemetry built before the host sets the global providers still reaches them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Global providers can be set once per process, so this runs in a child interpreter.
SCRIPT = textwrap.dedent(
    """
    import asyncio

    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from llm_server.core.config import FrameworkSettings
    from llm_server.core.model_interfaces import ModelOutput
    from llm_server.core.opentelemetry_integration import ModelCallInfo, Telemetry

    class Backend:
        model_id = "fast"
        program_metadata = None
        last_prompt_tokens = None
        last_completion_tokens = None

        async def predict(self, input):
            return ModelOutput(content="ok", model_id="fast", cost_usd=0.5)

        def get_lm_history(self):
            return []

    # 1. the library is set up first (e.g. at import of the app module) ...
    telemetry = Telemetry(FrameworkSettings(otel_enabled=True, _env_file=None))
    backend = telemetry.instrument(Backend(), ModelCallInfo("openai", "gpt-4o-mini"))

    # 2. ... and the host configures the SDK later, in its lifespan
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    asyncio.run(backend.predict("q"))
    names = sorted(
        m.name
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )
    print([s.name for s in exporter.get_finished_spans()], names)
    """
)


def test_telemetry_made_before_the_sdk_uses_the_global_providers_set_later() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "['chat gpt-4o-mini'] ['gen_ai.client.operation.duration', 'llm_server.client.cost_usd']"
    )
