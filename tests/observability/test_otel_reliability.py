"""The telemetry listener: a breaker listener and, inside a model-call span, a request observer."""

from __future__ import annotations

import random

import pytest
from _otel_helpers import FakeBackend, metric_points, output
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_server.core.circuit_breaker import BreakerListener, CircuitBreaker
from llm_server.core.errors import ProviderUnavailableError
from llm_server.core.opentelemetry_integration import ModelCallInfo, Telemetry
from llm_server.core.reliability import ReliableModel, RetryPolicy, build_reliable_backend
from llm_server.core.telemetry import RequestObserver
from llm_server.testing import FakeClock

INFO = ModelCallInfo(provider="openai", request_model="gpt-4o-mini")


def test_the_listener_is_a_breaker_listener_and_a_request_observer(telemetry: Telemetry) -> None:
    assert isinstance(telemetry.listener, RequestObserver)
    assert isinstance(telemetry.listener, BreakerListener)
    assert isinstance(Telemetry.disabled().listener, RequestObserver)


@pytest.mark.anyio
async def test_retries_trip_fallback_and_refusal_show_up_in_the_call_span_and_metrics(
    telemetry: Telemetry, exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        name="fast", failure_threshold=2, reset_timeout=60, clock=clock,
        listeners=[telemetry.listener],
    )  # fmt: skip
    telemetry.observe_breakers([breaker])
    primary = FakeBackend(result=ProviderUnavailableError("503", model_id="fast"))
    backup = FakeBackend(result=output(model_id="backup"), model_id="backup")
    chain = build_reliable_backend(
        ReliableModel(primary, breaker=breaker, retry=RetryPolicy(max_attempts=3)),
        [ReliableModel(backup)],
        clock=clock,
        rng=random.Random(1),
    )
    backend = telemetry.instrument(chain, INFO)  # attaches the listener inside its span

    first = await backend.predict("q")  # fail, retry, fail (breaker opens), fall back
    second = await backend.predict("q")  # refused at once, fall back

    assert first.model_id == second.model_id == "backup"
    assert len(primary.inputs) == 2
    first_span, second_span = exporter.get_finished_spans()
    assert [e.name for e in first_span.events] == [
        "llm_server.retry",
        "llm_server.circuit_breaker.transition",
        "llm_server.fallback",
    ]
    assert [e.name for e in second_span.events] == [
        "llm_server.circuit_breaker.refused",
        "llm_server.fallback",
    ]
    refused = dict(second_span.events[0].attributes or {})
    assert refused["llm_server.retry_after_s"] == pytest.approx(60.0)
    assert (first_span.attributes or {})["llm_server.response.model_id"] == "backup"

    points = metric_points(reader)
    assert [p.value for p in points["llm_server.client.retries"]] == [1]
    fallbacks = {p.attributes["error.type"]: p.value for p in points["llm_server.client.fallbacks"]}
    assert fallbacks == {"provider_unavailable": 1, "circuit_open": 1}
    assert [p.value for p in points["llm_server.circuit_breaker.refusals"]] == [1]
    (transition,) = points["llm_server.circuit_breaker.transitions"]
    assert transition.attributes["llm_server.circuit_breaker.to_state"] == "open"
    states = {
        p.attributes["llm_server.circuit_breaker.state"]: p.value
        for p in points["llm_server.circuit_breaker.state"]
    }
    assert states["open"] == 1
    assert states["closed"] == 0
