"""The shipped Grafana dashboard queries metrics and labels the library really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
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


FULL_ONLY = "LLM_SERVER_TELEMETRY_DETAIL=full only"


def expressions(panels: list[dict[str, Any]], *, full_only: bool | None = None) -> Iterator[str]:
    """The panels' queries; ``full_only`` keeps only (True) or leaves out (False) the panels
    whose description says they need the ``full`` detail level."""
    for panel in panels:
        marked = FULL_ONLY in panel.get("description", "")
        if full_only is None or marked == full_only:
            for target in panel.get("targets", []):
                yield target["expr"]
        yield from expressions(panel.get("panels", []), full_only=full_only)


def names(exprs: Iterable[str]) -> set[str]:
    return {
        token
        for expr in exprs
        for token in re.findall(r"\b(?:gen_ai|llm_server|error)_[a-z_]+\b", expr)
    }


async def exported(detail: str) -> tuple[set[str], set[str]]:
    """The metric sample names and labels a Prometheus scrape shows after a typical workload."""
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    try:
        settings = FrameworkSettings(otel_enabled=True, telemetry_detail=detail)
        telemetry = Telemetry(settings, meter_provider=provider)
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
    return samples, labels


@pytest.mark.anyio
async def test_every_dashboard_metric_and_label_is_exported_at_full_detail() -> None:
    samples, labels = await exported("full")
    dashboard = json.loads(DASHBOARD.read_text())
    used = names(expressions(dashboard["panels"]))
    assert used  # the dashboard does query our metrics
    unknown = {token for token in used if token not in samples and token not in labels}
    assert not unknown, f"dashboard refers to names the library does not export: {unknown}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.findall(r"label_values\((\w+), (\w+)\)", variable["definition"])[0]
            assert metric in samples
            assert label in labels


@pytest.mark.anyio
async def test_at_the_default_detail_only_the_panels_marked_full_stay_empty() -> None:
    samples, labels = await exported("genai")
    dashboard = json.loads(DASHBOARD.read_text())
    default = names(expressions(dashboard["panels"], full_only=False))
    missing = {token for token in default if token not in samples and token not in labels}
    assert not missing, f"unmarked panels query names the default level does not export: {missing}"
    metrics = {
        t
        for t in names(expressions(dashboard["panels"], full_only=True))
        if t
        in {
            "llm_server_pipeline_duration_seconds_bucket",
            "llm_server_pipeline_duration_seconds_count",
            "llm_server_pipeline_step_duration_seconds_bucket",
        }
    }
    assert metrics  # the marked panels are the pipeline ones...
    assert not metrics & samples  # ...and their metrics really are left out at this level
