"""Online evaluation: score a sample of captured requests in the background (private).

A sampled capture is handed from the recorder's writer thread to the event loop that served
it (one hand-off per written batch); one worker task per program scores the captures one at a
time, with a metric function (in a worker thread) or a DSPy judge program run through the
model manager's reliable backend (its breaker, rate limit, deadline and price apply) inside
``tenant_scope`` of the evaluation's own budget tenant. Scores are stored as feedback of kind
``judge``. Nothing here runs on a request's path: a full evaluation queue drops the capture
(counted).

The judge has the lowest priority on the loop: a judgement starts only after a 20 ms window
in which the loop's thread was busy less than a quarter of the time, when a yield to the loop
comes back at once (nothing else ready), and at least ``spacing_s`` after the previous one
started, so judgements never come in bursts; a capture that found no such moment within
``max_delay_s`` is skipped (counted). A judge call costs about the CPU of a request (a DSPy
call through the model stack): started while requests arrive, its pieces delay them. So a
judge scores in lulls and after load; on a server kept busy it skips, and says how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from llm_server.core.errors import ConfigurationError
from llm_server.core.reliability._budgets import tenant_scope
from llm_server.traffic._records import CapturedRequest

if TYPE_CHECKING:
    from llm_server.traffic._capture import TrafficRecorder

__all__ = ["OnlineEvaluation"]

_log = logging.getLogger("llm_server.traffic")
_WINDOW_S = 0.02  # the loop's recent busy share is measured over this long
_IDLE_SHARE = 0.25  # a judgement starts only after a window the loop was busy less than this
_QUIET_S = 0.0005  # and when a yield to the loop comes back sooner: nothing else was ready

Metric = Callable[[Mapping[str, Any], Mapping[str, Any]], float]
"""``metric(inputs, outputs) -> score``: the captured request's (redacted) fields."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OnlineEvaluation:
    """Score a sample of a program's captured requests in the background.

    Give either ``metric`` or ``judge`` (with ``model_id``).

    Attributes:
        sample_rate: Share of captured (successful) requests scored, 0 to 1.
        metric: ``metric(inputs, outputs) -> float``, run in a worker thread.
        judge: A DSPy signature or module class (or module instance) whose input fields are
            named like the program's inputs and outputs and whose outputs include ``score``
            (a number) and optionally ``label``.
        model_id: The configured model the judge runs on.
        tenant: The budget tenant the judge's model calls are checked against and charged to.
        queue_size: Captures that may wait to be scored; beyond it they are skipped (counted).
        spacing_s: Least time between the starts of two judgements (no bursts).
        max_delay_s: Longest a capture waits for a moment when the loop is idle; past it, it
            is skipped (counted): a busy server serves requests, not its judge.
    """

    sample_rate: float = 1.0
    metric: Metric | None = None
    judge: Any = None
    model_id: str | None = None
    tenant: str = "llm-server-judge"
    queue_size: int = 1000
    spacing_s: float = 0.05
    max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigurationError(
                f"evaluation sample_rate must be between 0 and 1, got {self.sample_rate!r}"
            )
        if (self.metric is None) == (self.judge is None):
            raise ConfigurationError("an online evaluation needs exactly one of metric= or judge=")
        if self.judge is not None and not self.model_id:
            raise ConfigurationError("a judge program needs model_id= (the model it runs on)")
        if self.queue_size < 1:
            raise ConfigurationError("evaluation queue_size must be at least 1")
        if not (self.spacing_s >= 0 and self.max_delay_s >= 0):
            raise ConfigurationError("evaluation spacing_s and max_delay_s must be at least 0")


def _judge_program(judge: Any) -> Any:
    import dspy

    if isinstance(judge, type) and issubclass(judge, dspy.Signature):
        return dspy.Predict(judge)
    if isinstance(judge, type) and issubclass(judge, dspy.Module):
        return judge()
    if isinstance(judge, dspy.Module):
        return judge
    raise ConfigurationError(
        f"judge must be a dspy.Signature or dspy.Module, got {type(judge).__name__}"
    )


def _input_names(program: Any) -> tuple[str, ...]:
    signature = getattr(program, "signature", None)
    if signature is None:
        predictors = program.predictors()
        signature = predictors[0].signature
    return tuple(signature.input_fields)


class _Evaluator:
    """One program's online evaluation: a bounded queue and one worker task per event loop."""

    def __init__(
        self,
        recorder: TrafficRecorder,
        program_id: str,
        options: OnlineEvaluation,
        model_manager: Any,
    ) -> None:
        if options.judge is not None and model_manager is None:
            raise ConfigurationError(
                f"program {program_id!r}: a judge needs the model manager (enable capture "
                "through the program manager)"
            )
        self._recorder = recorder
        self._program_id = program_id
        self._options = options
        self._model_manager = model_manager
        self._backend: Any = None
        self._names: tuple[str, ...] = ()
        self._queue: asyncio.Queue[tuple[float, CapturedRequest]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the queue's and the task's
        self._last_start = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._stopped = False
        self.skipped = 0
        """Captures not scored: the queue was full, the loop stayed busy, or the judge failed."""
        self.skipped_busy = 0
        """Of :attr:`skipped`: the loop was never idle within ``max_delay_s``."""
        self.scored = 0
        """Captures scored and stored as ``judge`` feedback."""

    def enqueue(self, capture: CapturedRequest) -> None:
        """Queue a written capture for scoring (on the loop that served it); after
        :meth:`stop`, skip it (counted)."""
        if self._stopped:
            self.skipped += 1
            return
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            # the first capture, or one served on a new loop (a new lifespan, a test's loop):
            # a queue and a limiter serve one loop; what the old loop's queue held is skipped
            self._abandon()
            self._queue = asyncio.Queue(self._options.queue_size)
            self._limiter = anyio.CapacityLimiter(1)
            self._loop = loop
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._work(self._queue))
        try:
            self._queue.put_nowait((loop.time(), capture))
        except asyncio.QueueFull:
            self.skipped += 1

    async def _work(self, pending: asyncio.Queue[tuple[float, CapturedRequest]]) -> None:
        while True:
            queued_at, capture = await pending.get()
            try:
                if not await self._idle_moment(queued_at):
                    self.skipped += 1
                    self.skipped_busy += 1
                    continue
                score, label = await self._score(capture)
                await self._recorder.afeedback(
                    capture.program_id,
                    capture.execution_id,
                    score=score,
                    label=label,
                    kind="judge",
                )
                self.scored += 1
            except asyncio.CancelledError:
                self.skipped += 1  # stopped while judging it
                raise
            except Exception as exc:
                self.skipped += 1
                _log.warning(
                    "online evaluation of %r skipped one capture: %s",
                    self._program_id,
                    type(exc).__name__,
                    exc_info=True,
                )
            finally:
                pending.task_done()

    async def _idle_moment(self, queued_at: float) -> bool:
        """Wait until ``spacing_s`` after the last judgement and for an idle loop (busy less
        than ``_IDLE_SHARE`` of a ``_WINDOW_S`` window, nothing else ready at its end);
        ``False`` if none came within ``max_delay_s`` of queueing."""
        loop = asyncio.get_running_loop()
        while True:
            wait = self._last_start + self._options.spacing_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            cpu, wall = time.thread_time(), time.perf_counter()  # the loop's own thread
            await asyncio.sleep(_WINDOW_S)
            busy = (time.thread_time() - cpu) / max(time.perf_counter() - wall, 1e-9)
            if busy < _IDLE_SHARE:
                looked = time.perf_counter()
                await asyncio.sleep(0)  # back at once unless other callbacks were ready
                if time.perf_counter() - looked < _QUIET_S:
                    self._last_start = loop.time()
                    return True
            if loop.time() - queued_at >= self._options.max_delay_s:
                return False

    async def _score(self, capture: CapturedRequest) -> tuple[float, str | None]:
        outputs = dict(capture.outputs or {})
        metric = self._options.metric
        if metric is not None:
            inputs = dict(capture.inputs)
            value = await anyio.to_thread.run_sync(
                lambda: metric(inputs, outputs), limiter=self._limiter
            )
            return float(value), None
        if self._backend is None:
            program = _judge_program(self._options.judge)
            self._names = _input_names(program)
            self._backend = self._model_manager.reliable_backend(
                program, str(self._options.model_id)
            )
        fields = {**capture.inputs, **outputs}
        missing = [name for name in self._names if name not in fields]
        if missing:
            raise ConfigurationError(
                f"judge of {self._program_id!r}: no program field named {', '.join(missing)}"
            )
        with tenant_scope(self._options.tenant):
            output = await self._backend.predict({name: fields[name] for name in self._names})
        prediction = output.content
        label = getattr(prediction, "label", None)
        return float(prediction.score), None if label is None else str(label)

    async def drain(self) -> None:
        """Wait until every queued capture of the running loop is scored (or the worker is
        stopped)."""
        task, queue = self._task, self._queue
        if (
            queue is not None
            and self._loop is asyncio.get_running_loop()
            and task is not None
            and not task.done()
        ):
            joined = asyncio.ensure_future(queue.join())
            try:
                await asyncio.wait((joined, task), return_when=asyncio.FIRST_COMPLETED)
            finally:
                joined.cancel()

    def stop(self) -> None:
        """Stop scoring: the worker is cancelled (from any thread) and captures handed over
        from now on are skipped (counted)."""
        self._stopped = True
        self._abandon()

    def _abandon(self) -> None:
        """Skip (counted) what the queue holds and cancel the worker, from any thread."""
        if self._queue is not None:
            self.skipped += self._queue.qsize()  # queued, never to be scored
        task, self._task = self._task, None
        if task is not None and not task.done():
            loop = task.get_loop()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)

    async def aclose(self) -> None:
        """:meth:`stop`, and wait for the worker to end when it runs on this loop."""
        task = self._task
        self.stop()
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
