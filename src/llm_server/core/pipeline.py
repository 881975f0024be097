"""Pipeline orchestration: validated at build time, timed and error-wrapped at execute time."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from llm_server.core._conformance import conforms
from llm_server.core.errors import (
    LLMServerError,
    MediaTypeMismatchError,
    PipelineValidationError,
    RedactedCause,
    StepError,
)
from llm_server.core.protocols import PipelineStep
from llm_server.core.telemetry._observation import StepTiming, notify_step
from llm_server.core.telemetry._otel import Telemetry, get_telemetry
from llm_server.core.telemetry._redaction import redact
from llm_server.core.types import MediaType, PipelineData

__all__ = ["Pipeline", "PipelineRun", "step_name"]


def step_name(step: object) -> str:
    """The display name of a step: its ``name`` attribute, else its class name."""
    name = getattr(step, "name", None)
    return name if isinstance(name, str) and name else type(step).__name__


def _types_text(types: Sequence[MediaType]) -> str:
    return "[" + ", ".join(str(t) for t in types) + "]"


@dataclass(frozen=True, slots=True)
class PipelineRun:
    """The outcome of :meth:`Pipeline.run`: the final data and each step's timing."""

    output: PipelineData
    steps: tuple[StepTiming, ...]

    @property
    def total_ms(self) -> float:
        """The sum of the steps' durations."""
        return sum(s.duration_ms for s in self.steps)


class Pipeline:
    """An ordered list of steps, each fed the previous step's output.

    The pipeline is checked when it is built: it must not be empty, every item must be a
    :class:`~llm_server.core.protocols.PipelineStep`, and when a step declares an
    ``output_media_type`` the next step must accept it.

    Args:
        steps: The steps, in order.
        name: A low-cardinality name used in timings, traces and metrics.
        telemetry: Where the pipeline's and steps' spans and duration metrics go (default: the
            process-wide :func:`~llm_server.core.opentelemetry_integration.get_telemetry`,
            read at each run).

    Raises:
        PipelineValidationError: The pipeline is malformed; the message names the steps.
    """

    def __init__(
        self,
        steps: Sequence[PipelineStep],
        *,
        name: str = "pipeline",
        telemetry: Telemetry | None = None,
    ) -> None:
        steps = list(steps)
        if not steps:
            raise PipelineValidationError(f"pipeline {name!r} has no steps")
        for index, step in enumerate(steps):
            if not conforms(step, PipelineStep):  # cached: pipelines are often built per request
                raise PipelineValidationError(
                    f"pipeline {name!r}: item {index} ({type(step).__name__}) is not a "
                    "PipelineStep: it needs `accepted_media_types` and `async process(data)`"
                )
        for index, (before, after) in enumerate(itertools.pairwise(steps)):
            produced = getattr(before, "output_media_type", None)
            accepted = list(after.accepted_media_types)
            if produced is not None and produced not in accepted:
                raise PipelineValidationError(
                    f"pipeline {name!r}: step {index} ({step_name(before)}) outputs "
                    f"{produced}, but step {index + 1} ({step_name(after)}) accepts "
                    f"{_types_text(accepted)}"
                )
        self.name = name
        self._steps: tuple[PipelineStep, ...] = tuple(steps)
        self._names = tuple(step_name(s) for s in steps)
        self._telemetry = telemetry

    @property
    def steps(self) -> tuple[PipelineStep, ...]:
        """The steps, in order."""
        return self._steps

    async def execute(self, data: PipelineData) -> PipelineData:
        """Run every step in order and return the last step's output.

        Raises:
            MediaTypeMismatchError: Data reached a step that does not accept its media type.
            StepError: A step raised an exception that is not an ``LLMServerError``; the
                original is the ``__cause__`` (a :class:`~llm_server.core.errors.RedactedCause`
                summary when it came from DSPy, LiteLLM or an HTTP client, whose exceptions may
                quote a key). Our own errors pass through unchanged, and
                cancellation is never caught.
        """
        # run()'s body, not an await of run(): one coroutine frame less on every resumption.
        telemetry = self._telemetry if self._telemetry is not None else get_telemetry()
        with telemetry.pipeline_span(self.name):
            return (await self._run_steps(data, telemetry)).output

    async def run(self, data: PipelineData) -> PipelineRun:
        """Like :meth:`execute`, but also return each step's timing."""
        telemetry = self._telemetry if self._telemetry is not None else get_telemetry()
        with telemetry.pipeline_span(self.name):
            return await self._run_steps(data, telemetry)

    async def _run_steps(self, data: PipelineData, telemetry: Telemetry) -> PipelineRun:
        timings: list[StepTiming] = []
        current = data
        for index, step in enumerate(self._steps):
            name = self._names[index]
            if current.media_type not in step.accepted_media_types:
                raise MediaTypeMismatchError(
                    f"pipeline {self.name!r}: step {index} ({name}) does not accept "
                    f"{current.media_type} data; it accepts "
                    f"{_types_text(list(step.accepted_media_types))}",
                    step=name,
                )
            with telemetry.step_span(self.name, name, index):
                started = time.perf_counter()
                outcome: str = "error"
                failure: Exception | None = None
                try:
                    result = await step.process(current)
                    if not isinstance(result, PipelineData):
                        raise StepError(
                            f"pipeline {self.name!r}: step {index} ({name}) returned "
                            f"{type(result).__name__}, not PipelineData",
                            step=name,
                        )
                    outcome = "ok"
                except LLMServerError:
                    raise
                except Exception as exc:
                    failure = exc
                finally:
                    timing = StepTiming(
                        pipeline=self.name,
                        step=name,
                        index=index,
                        duration_ms=(time.perf_counter() - started) * 1000.0,
                        outcome="ok" if outcome == "ok" else "error",
                    )
                    timings.append(timing)
                    notify_step(timing)
                if failure is not None:  # raised outside the except block: no __context__
                    raise StepError(
                        f"pipeline {self.name!r}: step {index} ({name}) failed: "
                        f"{type(failure).__name__}: {redact(str(failure))}",
                        step=name,
                    ) from _cause(failure)
            current = result
        return PipelineRun(output=current, steps=tuple(timings))

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, steps={list(self._names)!r})"


# Exceptions of these packages may carry a request, its headers or a provider's error body
# quoting a key: they are chained as a redacted summary. A step's own exceptions stay the
# cause as they are, tracebacks and all, for their authors to debug.
_DEPENDENCIES = frozenset(
    {"dspy", "litellm", "openai", "anthropic", "httpx", "httpcore", "aiohttp", "requests"}
)


def _cause(error: Exception) -> BaseException:
    if type(error).__module__.partition(".")[0] in _DEPENDENCIES:
        return RedactedCause(error)
    return error
