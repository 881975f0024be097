"""Test doubles and readers shared by the observability tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan

from llm_server.core.model_interfaces import ModelOutput, TokenCountMethod, TokenUsage
from llm_server.core.types import MediaType, PipelineData


def output(**overrides: Any) -> ModelOutput:
    """A typical successful model output (overridable field by field)."""
    values: dict[str, Any] = {
        "content": {"answer": "Paris"},
        "model_id": "fast",
        "usage": TokenUsage(
            input_tokens=50, output_tokens=150, total_tokens=200, method=TokenCountMethod.EXACT
        ),
        "cost_usd": 0.0025,
        "response_model": "gpt-4o-mini-2024-07-18",
        "finish_reasons": ("stop",),
    }
    values.update(overrides)
    return ModelOutput(**values)


@dataclass
class FakeBackend:
    """A ModelBackend that returns a fixed output or raises a fixed error."""

    result: ModelOutput | BaseException = field(default_factory=output)
    model_id: str = "fast"
    program_metadata: Any = None
    last_prompt_tokens: int | None = None
    last_completion_tokens: int | None = None
    before: Callable[[], None] | None = None
    inputs: list[Any] = field(default_factory=list)

    async def predict(self, input: Any) -> ModelOutput:
        self.inputs.append(input)
        if self.before is not None:
            self.before()
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result

    def get_lm_history(self) -> list[Any]:
        return ["history"]


@dataclass
class CallingStep:
    """A text step that sends its text to a backend and returns the answer as text."""

    backend: Any
    name: str = "ask"

    @property
    def accepted_media_types(self) -> Sequence[MediaType]:
        return [MediaType.TEXT]

    async def process(self, data: PipelineData) -> PipelineData:
        result = await self.backend.predict({"question": data.content})
        return PipelineData(media_type=MediaType.TEXT, content=str(result.content))


@dataclass
class FailingStep:
    """A text step that raises ``error``."""

    error: Exception
    name: str = "explode"

    @property
    def accepted_media_types(self) -> Sequence[MediaType]:
        return [MediaType.TEXT]

    async def process(self, data: PipelineData) -> PipelineData:
        raise self.error


@dataclass
class FakeBreaker:
    """Just enough of a circuit breaker for the state gauge and the listener."""

    name: str
    state: str = "closed"


def span_named(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    """The one finished span called ``name``."""
    matches = [s for s in spans if s.name == name]
    assert len(matches) == 1, [s.name for s in spans]
    return matches[0]


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every data point collected so far, by metric name."""
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    if data is None:
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def metric_units(reader: InMemoryMetricReader) -> dict[str, str]:
    """Each collected metric's unit, by name."""
    data = reader.get_metrics_data()
    units: dict[str, str] = {}
    if data is None:
        return units
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                units[metric.name] = metric.unit
    return units


def write_pieces(*pieces: str, pause_s: float = 0.0) -> Callable[[], None]:
    """A ``FakeBackend(before=...)`` hook that streams ``pieces`` of the ``answer`` field, as a
    model writing them would (``pause_s`` apart), into the streamed call's sink."""

    def write() -> None:
        from llm_server.core.streaming import current_sink

        sink = current_sink()
        assert sink is not None, "not called inside stream_events()"
        for text in pieces:
            sink.put("answer", text)
            time.sleep(pause_s)  # blocking on purpose: the model writing, between pieces

    return write
