"""Telemetry: what a request leaves behind (spans, metrics, JSON logs) and who is told.

::

    request ──> Pipeline ──> steps ──> ModelProcessor ──> model-call stack (reliability/)
       │           │            │                             │
       │           └─ notify_step(timing)        notify_retry / notify_fallback /
       │                                         notify_breaker_refusal / notify_model_output
       ▼                                                      ▼
    observers attached to the request's context (RequestObserver): PerformanceMetrics
    (the envelope's performance block) and, inside each model-call span, TelemetryListener
    (span events and counters); every hook is guarded, an observer never fails a call.

    log records ──> RedactingFilter ──> JsonFormatter (with log_context ids)
    spans/metrics ──> opentelemetry-api only (the host app configures an SDK, or nothing)

Its modules (private; the names are public here or at
:mod:`llm_server.core.opentelemetry_integration`):

- ``_observation``: :class:`RequestObserver`, the one observer protocol, and its contextvar;
- ``_otel``, ``_signals``, ``_model_call``, ``_listeners``, ``_names``: OpenTelemetry traces
  and metrics on the GenAI semantic conventions (public at ``opentelemetry_integration``);
- ``_logging``: JSON logs and :func:`log_context`;
- ``_redaction``: masking of keys in every message that leaves the library.
"""

from llm_server.core.telemetry._logging import configure_json_logging, log_context
from llm_server.core.telemetry._observation import (
    RequestObserver,
    StepTiming,
    attach_observer,
    observing,
)
from llm_server.core.telemetry._redaction import RedactingFilter, redact, register_secret

__all__ = [
    "RedactingFilter",
    "RequestObserver",
    "StepTiming",
    "attach_observer",
    "configure_json_logging",
    "log_context",
    "observing",
    "redact",
    "register_secret",
]
