"""The core: the pipeline kernel, the shared vocabulary, and three subpackages.

::

    core/
    ├── types, protocols, model_interfaces   what flows and the seams users plug into
    ├── pipeline, implementations            Pipeline and the standard steps
    ├── config, model_config                 FrameworkSettings and the YAML schema
    ├── errors                               the one exception hierarchy
    ├── metrics_wrappers, metadata           the envelope's performance and metadata blocks
    ├── tokens, pricing, clock               token counting, prices, injectable time
    ├── circuit_breaker                      entry point: the breaker (lives in reliability/)
    ├── opentelemetry_integration            entry point: OpenTelemetry (lives in telemetry/)
    ├── reliability/                         deadline, fallback, retry and breaker wrappers
    ├── telemetry/                           observers, spans and metrics, JSON logs, redaction
    └── media/                               images, structured data, blocking work

Modules whose name starts with ``_`` are private, in every package. Each public name has one
documented home: the module whose ``__all__`` lists it.
"""
