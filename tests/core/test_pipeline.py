"""Pipeline: build-time validation, execute-time checks, error wrapping and timings."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Sequence
from typing import Any

import pytest

from llm_server.core.errors import (
    LLMServerError,
    MediaTypeMismatchError,
    PipelineValidationError,
    RateLimitedError,
    RedactedCause,
    StepError,
)
from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.pipeline import Pipeline
from llm_server.core.protocols import PipelineStep
from llm_server.core.telemetry import StepTiming, observing
from llm_server.core.types import MediaType, PipelineData


class Upper:
    """A duck-typed step: it does not subclass PipelineStep."""

    accepted_media_types = (MediaType.TEXT,)
    output_media_type = MediaType.TEXT

    async def process(self, data: PipelineData) -> PipelineData:
        return data.evolve(content=str(data.content).upper(), metadata={"upper": True})


class TextToStructured:
    accepted_media_types = (MediaType.TEXT,)
    output_media_type = MediaType.STRUCTURED

    async def process(self, data: PipelineData) -> PipelineData:
        return data.evolve(content={"text": data.content}, media_type=MediaType.STRUCTURED)


class Lies:
    """Declares TEXT output but produces STRUCTURED (caught at execute time)."""

    accepted_media_types = (MediaType.TEXT,)

    async def process(self, data: PipelineData) -> PipelineData:
        return data.evolve(content={"x": 1}, media_type=MediaType.STRUCTURED)


class Raises:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.name = "raiser"

    @property
    def accepted_media_types(self) -> Sequence[MediaType]:
        return [MediaType.TEXT]

    async def process(self, data: PipelineData) -> PipelineData:
        raise self.exc


class Subclassed(PipelineStep):
    """The reference README style: subclass the protocol explicitly."""

    @property
    def accepted_media_types(self) -> list[MediaType]:
        return [MediaType.TEXT]

    async def process(self, data: PipelineData) -> PipelineData:
        return data.evolve(metadata={"subclassed": True})


def text(content: str = "hello") -> PipelineData:
    return PipelineData(media_type=MediaType.TEXT, content=content)


def test_empty_pipeline_is_rejected() -> None:
    with pytest.raises(PipelineValidationError, match="no steps"):
        Pipeline([])


@pytest.mark.parametrize("not_a_step", [object(), "step", lambda d: d, 42])
def test_non_steps_are_rejected_naming_the_item(not_a_step: Any) -> None:
    with pytest.raises(PipelineValidationError, match=r"item 1 .* is not a PipelineStep"):
        Pipeline([Upper(), not_a_step])


def test_adjacent_type_mismatch_names_both_steps_and_types() -> None:
    with pytest.raises(PipelineValidationError) as info:
        Pipeline([TextToStructured(), Upper()])
    message = str(info.value)
    assert "TextToStructured" in message
    assert "Upper" in message
    assert "structured" in message
    assert "[text]" in message


def test_steps_without_declared_output_are_accepted_at_build_time() -> None:
    assert len(Pipeline([Lies(), Upper()]).steps) == 2


@pytest.mark.anyio
async def test_execute_runs_steps_in_order_and_carries_metadata() -> None:
    result = await Pipeline([Upper(), Subclassed(), TextToStructured()]).execute(text("hi"))
    assert result.media_type is MediaType.STRUCTURED
    assert result.content == {"text": "HI"}
    assert dict(result.metadata) == {"upper": True, "subclassed": True}


@pytest.mark.anyio
async def test_wrong_media_type_at_execute_names_the_step() -> None:
    pipeline = Pipeline([Lies(), Upper()])
    with pytest.raises(
        MediaTypeMismatchError, match=r"step 1 \(Upper\) does not accept structured"
    ):
        await pipeline.execute(text())


@pytest.mark.anyio
async def test_first_step_rejects_input_of_the_wrong_type() -> None:
    data = PipelineData(media_type=MediaType.IMAGE, content=b"")
    with pytest.raises(MediaTypeMismatchError) as info:
        await Pipeline([Upper()]).execute(data)
    assert info.value.step == "Upper"


@pytest.mark.anyio
async def test_unexpected_exception_becomes_step_error_with_cause() -> None:
    boom = ValueError("boom")
    with pytest.raises(StepError, match=r"step 0 \(raiser\) failed: ValueError: boom") as info:
        await Pipeline([Raises(boom)]).execute(text())
    assert info.value.__cause__ is boom
    assert info.value.step == "raiser"


class AuthenticationError(Exception):
    """Stands for a provider SDK's exception, which may quote the key it was given."""


AuthenticationError.__module__ = "litellm.exceptions"


@pytest.mark.anyio
async def test_a_dependency_exception_is_chained_as_a_redacted_summary() -> None:
    key = "sk-proj-PLANTEDabcdefghijklmnop0123"
    boom = AuthenticationError(f"401 Incorrect API key provided: {key}")
    with pytest.raises(StepError) as info:
        await Pipeline([Raises(boom)]).execute(text())
    cause = info.value.__cause__
    assert isinstance(cause, RedactedCause)
    assert cause.type_name == "litellm.exceptions.AuthenticationError"
    assert info.value.__context__ is None
    printed = "".join(traceback.format_exception(info.value))
    assert "Incorrect API key provided" in printed
    assert "PLANTED" not in printed


@pytest.mark.anyio
async def test_our_own_errors_pass_through_unchanged() -> None:
    error = RateLimitedError("slow down", retry_after_s=2.0)
    with pytest.raises(RateLimitedError) as info:
        await Pipeline([Raises(error)]).execute(text())
    assert info.value is error
    assert isinstance(info.value, LLMServerError)


@pytest.mark.anyio
async def test_cancellation_is_never_swallowed() -> None:
    with pytest.raises(asyncio.CancelledError):
        await Pipeline([Raises(asyncio.CancelledError())]).execute(text())


@pytest.mark.anyio
async def test_a_step_returning_the_wrong_type_is_a_step_error() -> None:
    class ReturnsString:
        accepted_media_types = (MediaType.TEXT,)

        async def process(self, data: PipelineData) -> Any:
            return "oops"

    with pytest.raises(StepError, match="returned str, not PipelineData"):
        await Pipeline([ReturnsString()]).execute(text())


class Recorder:
    def __init__(self) -> None:
        self.steps: list[StepTiming] = []

    def on_step(self, timing: StepTiming) -> None:
        self.steps.append(timing)

    def on_model_output(self, output: ModelOutput) -> None:
        raise AssertionError("no model calls here")


@pytest.mark.anyio
async def test_run_records_each_step_duration_and_observers_see_them() -> None:
    class Slow(Upper):
        async def process(self, data: PipelineData) -> PipelineData:
            await asyncio.sleep(0.01)
            return data

    recorder = Recorder()
    with observing(recorder):
        run = await Pipeline([Upper(), Slow()], name="demo").run(text())
    assert [t.step for t in run.steps] == ["Upper", "Slow"]
    assert [t.index for t in run.steps] == [0, 1]
    assert all(t.outcome == "ok" and t.pipeline == "demo" for t in run.steps)
    assert run.steps[1].duration_ms >= 9.0
    assert run.total_ms == pytest.approx(sum(t.duration_ms for t in run.steps))
    assert recorder.steps == list(run.steps)


@pytest.mark.anyio
async def test_a_failing_step_is_recorded_as_an_error() -> None:
    recorder = Recorder()
    with observing(recorder), pytest.raises(StepError):
        await Pipeline([Upper(), Raises(KeyError("k"))]).execute(text())
    assert [(t.step, t.outcome) for t in recorder.steps] == [("Upper", "ok"), ("raiser", "error")]


@pytest.mark.anyio
async def test_observers_of_concurrent_runs_do_not_cross_talk() -> None:
    pipeline = Pipeline([Upper()])

    async def one(i: int) -> Recorder:
        recorder = Recorder()
        with observing(recorder):
            await asyncio.sleep(0)
            await pipeline.execute(text(str(i)))
        return recorder

    recorders = await asyncio.gather(*(one(i) for i in range(20)))
    assert all(len(r.steps) == 1 for r in recorders)
