"""The shipped Grafana dashboard queries metrics and labels the library really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _otel_helpers import CallingStep, FakeBackend, FakeBreaker
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llm_server.core.circuit_breaker import CircuitBreaker
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import RateLimitedError
from llm_server.core.opentelemetry_integration import ModelCallInfo, Telemetry
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData

DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana_dashboard.json"
INFO = ModelCallInfo.from_model_name("openai/gpt-4o-mini", api_base="http://127.0.0.1:8001/v1")


def expressions(panels: list[dict[str, Any]]) -> Iterator[str]:
    for panel in panels:
        for target in panel.get("targets", []):
            yield target["expr"]
        yield from expressions(panel.get("panels", []))


@pytest.mark.anyio
async def test_every_dashboard_metric_and_label_is_exported() -> None:
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    try:
        telemetry = Telemetry(FrameworkSettings(otel_enabled=True), meter_provider=provider)
        backend = telemetry.instrument(FakeBackend(), INFO)
        await Pipeline([CallingStep(backend)], name="qa", telemetry=telemetry).execute(
            PipelineData(media_type=MediaType.TEXT, content="q")
        )
        with pytest.raises(RateLimitedError):
            await telemetry.instrument(FakeBackend(result=RateLimitedError("429")), INFO).predict(
                "q"
            )
        breaker = FakeBreaker("fast")
        telemetry.observe_breakers([breaker])
        telemetry.listener.on_retry("fast", 1, RateLimitedError("429"), 0.1)
        telemetry.listener.on_fallback("fast", "backup", RateLimitedError("429"))
        telemetry.listener.on_state_change(breaker, "closed", "open")
        refusing = CircuitBreaker(name="slow", failure_threshold=1)
        telemetry.observe_breakers([refusing])
        refusing.force_open()
        refusing.refuse()
        text = generate_latest(registry).decode()
    finally:
        provider.shutdown()

    samples: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.add(sample.name)
            labels.update(sample.labels)

    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        token
        for expr in expressions(dashboard["panels"])
        for token in re.findall(r"\b(?:gen_ai|llm_server|error)_[a-z_]+\b", expr)
    }
    assert used  # the dashboard does query our metrics
    unknown = {token for token in used if token not in samples and token not in labels}
    assert not unknown, f"dashboard refers to names the library does not export: {unknown}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.findall(r"label_values\((\w+), (\w+)\)", variable["definition"])[0]
            assert metric in samples
            assert label in labels
