"""OpenTelemetry traces and metrics on the GenAI semantic conventions.

The library depends on ``opentelemetry-api`` only and never configures an SDK: the host app
does (see the observability guide), and until it does every call is the API's no-op. With
``FrameworkSettings.otel_enabled`` false, :class:`Telemetry` hands out no-op parts chosen once,
so hot paths pay for nothing but a method call. An exception inside telemetry never fails a
request: it is logged once (logger ``llm_server.telemetry``) and the request goes on.

What is emitted when enabled, at the default detail level (``telemetry_detail="genai"``):

* through :class:`InstrumentedBackend`, a ``CLIENT`` span per model call named
  ``"{gen_ai.operation.name} {gen_ai.request.model}"`` with the conventions' ``gen_ai.*``,
  ``server.*`` and ``error.type`` attributes; prompts and completions only on opt-in;
* span events for retries, fallbacks, breaker refusals and transitions (:class:`TelemetryListener`);
* histograms ``gen_ai.client.operation.duration`` and ``gen_ai.client.token.usage`` (with the
  conventions' buckets); counters ``llm_server.client.cost_usd``, ``llm_server.client.retries``,
  ``llm_server.client.fallbacks``, ``llm_server.circuit_breaker.transitions`` and
  ``llm_server.circuit_breaker.refusals``; the gauge ``llm_server.circuit_breaker.state``.

At ``telemetry_detail="full"`` also a span per pipeline execution (``pipeline {name}``) with a
child per step (``step {name}``) and their histograms ``llm_server.pipeline.duration`` and
``llm_server.pipeline.step.duration``, the legacy ``llm.*`` span attributes (or whenever
``otel_llm_attributes`` is true), ``llm_server.client.active_calls`` and
``llm_server.client.connection_wait``.

Example::

    telemetry = Telemetry(FrameworkSettings(otel_enabled=True))
    set_telemetry(telemetry)  # pipelines pick it up
    backend = telemetry.instrument(backend, ModelCallInfo.from_model_config(config))
"""

from llm_server.core.telemetry._listeners import TelemetryListener
from llm_server.core.telemetry._model_call import ModelCallInfo
from llm_server.core.telemetry._otel import (
    InstrumentedBackend,
    Telemetry,
    current_trace_id,
    get_telemetry,
    set_telemetry,
)

__all__ = [
    "InstrumentedBackend",
    "ModelCallInfo",
    "Telemetry",
    "TelemetryListener",
    "current_trace_id",
    "get_telemetry",
    "set_telemetry",
]
