"""ModelProcessor, PerformanceMetrics, ModelBackendTracker and MetadataCollector."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from llm_server.core.errors import PipelineValidationError
from llm_server.core.implementations import DefaultOutputProcessor, ModelProcessor
from llm_server.core.metadata import MetadataCollector
from llm_server.core.metrics_wrappers import ModelBackendTracker, PerformanceMetrics
from llm_server.core.model_interfaces import ModelOutput, TokenCountMethod, TokenUsage
from llm_server.core.pipeline import Pipeline
from llm_server.core.telemetry._observation import notify_model_output
from llm_server.core.types import MediaType, PipelineData


class EchoBackend:
    """Answers ``{"output": "echo: <input>"}``; reports like framework backends when asked."""

    def __init__(self, *, notify: bool, cost: float | None = 0.001) -> None:
        self.model_id = "m"
        self.program_metadata = None
        self.last_prompt_tokens: int | None = None
        self.last_completion_tokens: int | None = None
        self.notify = notify
        self.cost = cost
        self.inputs: list[Any] = []

    async def predict(self, input: Any) -> ModelOutput:
        self.inputs.append(input)
        await asyncio.sleep(0)
        text = str(input["input"] if isinstance(input, dict) else input)
        n = len(text)
        output = ModelOutput(
            content={"reasoning": "because", "output": f"echo: {text}"},
            model_id=self.model_id,
            usage=TokenUsage(n, 2 * n, 3 * n, TokenCountMethod.EXACT),
            cost_usd=self.cost,
        )
        if self.notify:
            notify_model_output(output)
        return output

    def get_lm_history(self) -> list[Any]:
        return []


def text(content: str) -> PipelineData:
    return PipelineData(media_type=MediaType.TEXT, content=content)


@pytest.mark.anyio
async def test_model_processor_with_a_backend_feeds_the_input_key() -> None:
    backend = EchoBackend(notify=True)
    step = ModelProcessor(backend=backend, input_key="input", output_type=MediaType.TEXT)
    result = await Pipeline([step]).execute(text("hi"))
    assert backend.inputs == [{"input": "hi"}]
    assert result.content == "echo: hi"  # the last output field, not the reasoning
    assert result.metadata["model_output"]["model_id"] == "m"


@pytest.mark.anyio
async def test_structured_output_has_every_field() -> None:
    step = ModelProcessor(
        backend=EchoBackend(notify=True), input_key="input", output_type=MediaType.STRUCTURED
    )
    result = await step.process(text("x"))
    assert result.media_type is MediaType.STRUCTURED
    assert result.content == {"reasoning": "because", "output": "echo: x"}


def test_model_processor_needs_one_complete_form() -> None:
    with pytest.raises(PipelineValidationError, match="needs either backend"):
        ModelProcessor(model_id="m")
    with pytest.raises(PipelineValidationError, match="not a ModelBackend"):
        ModelProcessor(backend=object())  # type: ignore[arg-type]


def test_model_processor_builds_its_backend_from_a_manager() -> None:
    class Manager:
        def __init__(self) -> None:
            self.asked: list[tuple[Any, str]] = []

        def backend_for(self, program: Any, model_id: str) -> EchoBackend:
            self.asked.append((program, model_id))
            return EchoBackend(notify=True)

    manager = Manager()
    step = ModelProcessor(
        model_manager=manager,
        model_id="m",
        signature_class=dict,
        input_key="input",
        output_processor=DefaultOutputProcessor(),
        accepted_types=[MediaType.TEXT],
        output_type=MediaType.TEXT,
    )
    assert manager.asked == [(dict, "m")]
    assert step.accepted_media_types == (MediaType.TEXT,)
    assert step.output_media_type is MediaType.TEXT


@pytest.mark.anyio
async def test_metrics_created_before_the_pipeline_receive_the_calls_usage() -> None:
    metrics = PerformanceMetrics()
    step = ModelProcessor(backend=EchoBackend(notify=True), input_key="input")
    await Pipeline([step]).execute(text("abcd"))
    metrics.mark_checkpoint("pipeline_complete")
    summary = metrics.get_summary()
    assert summary["tokens"] == {
        "input": 4,
        "output": 8,
        "total": 12,
        "cost_usd": 0.001,
        "method": "dspy_history_exact",
    }
    assert set(summary["timing"]) == {"total_ms", "model_complete_ms", "pipeline_complete_ms"}
    assert re.fullmatch(r"[0-9a-f]{32}", summary["trace_id"])
    assert [s.step for s in metrics.steps] == ["ModelProcessor"]


@pytest.mark.anyio
async def test_concurrent_requests_never_see_each_others_tokens() -> None:
    backend = EchoBackend(notify=True)
    pipeline = Pipeline([ModelProcessor(backend=backend, input_key="input")])

    async def request(i: int) -> tuple[int, dict[str, Any]]:
        metrics = PerformanceMetrics()
        await pipeline.execute(text("x" * i))
        return i, metrics.get_summary()

    results = await asyncio.gather(*(asyncio.create_task(request(i)) for i in range(1, 201)))
    for i, summary in results:
        assert summary["tokens"]["input"] == i
        assert summary["tokens"]["total"] == 3 * i


@pytest.mark.anyio
async def test_no_model_call_means_unavailable_not_zero() -> None:
    summary = PerformanceMetrics().get_summary()
    assert summary["tokens"] == {
        "input": None,
        "output": None,
        "total": None,
        "cost_usd": None,
        "method": "unavailable",
    }


@pytest.mark.anyio
async def test_unknown_price_gives_null_cost() -> None:
    metrics = PerformanceMetrics()
    await EchoBackend(notify=True, cost=None).predict("hello")
    assert metrics.get_summary()["tokens"]["cost_usd"] is None
    assert metrics.get_summary()["tokens"]["input"] == 5


@pytest.mark.anyio
@pytest.mark.parametrize("notify", [True, False])
async def test_tracker_counts_each_call_once(notify: bool) -> None:
    metrics = PerformanceMetrics(attach=False)
    tracked = ModelBackendTracker(EchoBackend(notify=notify), metrics)
    await tracked.predict("abc")
    await tracked.predict("abcdef")
    assert metrics.model_calls == 2
    assert metrics.get_summary()["tokens"]["input"] == 9
    assert tracked.model_id == "m"


def test_connection_waits_add_up_across_calls_and_are_absent_when_unmeasured() -> None:
    metrics = PerformanceMetrics(attach=False)
    metrics.on_model_output(ModelOutput(content="a", model_id="m", metadata={"lm_calls": 1}))
    assert "connection_wait_ms" not in metrics.get_summary()["timing"]  # not measured
    for waited in (1.5, 20.25):
        metrics.on_model_output(
            ModelOutput(content="b", model_id="m", metadata={"connection_wait_ms": waited})
        )
    assert metrics.get_summary()["timing"]["connection_wait_ms"] == 21.75


@pytest.mark.parametrize("last_cost", [0.25, None])
def test_the_summary_sums_every_output_as_the_single_figures_do(last_cost: float | None) -> None:
    metrics = PerformanceMetrics(attach=False)
    outputs = [
        ModelOutput(
            content=None,
            model_id="m",
            usage=TokenUsage(3, 1, 4, TokenCountMethod.EXACT),
            cost_usd=0.5,
            metadata={"outcome": "unparseable_output"},
        ),
        ModelOutput(content=None, model_id="m", cost_usd=0.125, metadata={"outcome": "cut"}),
        ModelOutput(
            content="a",
            model_id="m",
            usage=TokenUsage(5, 2, 7, TokenCountMethod.EXACT),
            cost_usd=last_cost,
            metadata={"answer_attempts": {"unparseable_output": 1, "ok": 1}},
        ),
    ]
    for output in outputs:
        metrics.on_model_output(output)
    usage = metrics.usage()
    assert usage is not None
    summary = metrics.get_summary()
    assert summary["tokens"] == {
        "input": usage.input_tokens,
        "output": usage.output_tokens,
        "total": usage.total_tokens,
        "cost_usd": metrics.cost_usd(),
        "method": str(TokenCountMethod.EXACT),
    }
    assert (usage.input_tokens, metrics.cost_usd()) == (8, 0.875 if last_cost else None)
    assert summary["answer_attempts"] == metrics.answer_attempts()
    assert summary["answer_attempts"] == {"unparseable_output": 1, "ok": 1}


def test_envelope_metadata_has_the_reference_shape() -> None:
    metadata = MetadataCollector.collect_response_metadata(
        model_id="gpt-4o-mini",
        program_metadata={"id": "predictor", "version": "1.0.0", "name": "Predictor"},
        performance_metrics={"timing": {"total_ms": 1.0}, "tokens": {}, "trace_id": "t"},
        model_info={"id": "gpt-4o-mini", "provider": "openai", "base_model": "gpt-4o-mini"},
    )
    assert list(metadata) == ["program", "model", "performance", "execution_id", "timestamp"]
    assert metadata["program"]["id"] == "predictor"
    assert metadata["model"]["provider"] == "openai"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", metadata["timestamp"])
    assert len(metadata["execution_id"]) == 36


def test_envelope_names_the_fallback_model_that_answered() -> None:
    metadata = MetadataCollector.collect_response_metadata(
        model_id="primary",
        performance_metrics={"fallback": {"answered_by": "backup", "tried": ["primary"]}},
        model_info={"id": "primary", "provider": "openai", "base_model": "x"},
    )
    assert metadata["model"]["id"] == "backup"
    assert metadata["model"]["requested_id"] == "primary"


@pytest.mark.anyio
async def test_metrics_know_which_fallback_model_answered() -> None:
    from llm_server.core.errors import ProviderUnavailableError
    from llm_server.core.reliability import ReliableModel, build_reliable_backend
    from llm_server.testing import ScriptedBackend

    primary = ScriptedBackend(model_id="primary", default=ProviderUnavailableError("503"))
    backup = EchoBackend(notify=True)
    backup.model_id = "backup"
    backend = build_reliable_backend(ReliableModel(primary), [ReliableModel(backup)])

    metrics = PerformanceMetrics()
    await Pipeline([ModelProcessor(backend=backend, input_key="input")]).execute(text("abc"))
    summary = metrics.get_summary()
    assert summary["fallback"] == {"answered_by": "backup", "tried": ["primary"]}
    assert summary["tokens"]["input"] == 3  # counted once
    metadata = MetadataCollector.collect_response_metadata(
        model_id="primary", performance_metrics=summary, model_info={"id": "primary"}
    )
    assert metadata["model"] == {"id": "backup", "requested_id": "primary"}


@pytest.mark.anyio
async def test_requests_handled_in_a_loop_in_one_task_do_not_accumulate_observers() -> None:
    from llm_server.core.telemetry._observation import _observers

    backend = EchoBackend(notify=True)
    summaries = []
    for i in range(1, 51):
        metrics = PerformanceMetrics()
        await backend.predict("x" * i)
        summaries.append(metrics.get_summary())
    assert [s["tokens"]["input"] for s in summaries] == list(range(1, 51))
    assert sum(isinstance(o, PerformanceMetrics) for o in _observers.get()) == 1


class _ScriptedClock:
    """Stands in for the ``time`` module of ``llm_server.core.metadata``."""

    def __init__(self, *nanos: int) -> None:
        self._nanos = list(nanos)

    def time_ns(self) -> int:
        return self._nanos.pop(0)


def test_timestamp_is_the_clock_in_utc_to_the_microsecond_across_second_boundaries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llm_server.core import metadata

    second = 1_780_000_000  # 2026-05-28T20:26:40Z
    ticks = [
        second * 10**9 + 999_999_999,  # floored to .999999, not rounded into the next second
        (second + 1) * 10**9 + 1_000,  # the next second: a new prefix, never the cached one
        (second + 1) * 10**9 + 500_999,
        (second + 86_400) * 10**9,  # the next day, at .000000
    ]
    monkeypatch.setattr(metadata, "time", _ScriptedClock(*ticks))
    assert [metadata.utc_timestamp() for _ in ticks] == [
        "2026-05-28T20:26:40.999999Z",
        "2026-05-28T20:26:41.000001Z",
        "2026-05-28T20:26:41.000500Z",
        "2026-05-29T20:26:40.000000Z",
    ]


def test_timestamp_agrees_with_datetime_now() -> None:
    from datetime import UTC, datetime

    from llm_server.core.metadata import utc_timestamp

    before = datetime.now(UTC)
    stamp = datetime.fromisoformat(utc_timestamp().replace("Z", "+00:00"))
    assert before <= stamp <= datetime.now(UTC)


def test_program_block_is_a_fresh_dump_of_the_model_on_every_call() -> None:
    from pydantic import BaseModel

    from llm_server.models.program_manager import ProgramMetadata

    class Editable(BaseModel):
        id: str
        version: str

    def program_block(program: object) -> dict[str, Any]:
        block: dict[str, Any] = MetadataCollector.collect_response_metadata(
            model_id="m", program_metadata=program
        )["program"]
        return block

    frozen = ProgramMetadata(id="p", version="1.0.0", name="P", optimizer_settings={"k": 1})
    first = program_block(frozen)
    first["version"] = "changed by a caller"
    assert program_block(frozen) == {"id": "p", "version": "1.0.0", "name": "P"}
    editable = Editable(id="e", version="1")
    assert program_block(editable) == {"id": "e", "version": "1"}
    editable.version = "2"
    assert program_block(editable) == {"id": "e", "version": "2"}
