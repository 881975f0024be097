"""A :class:`~llm_server.core.protocols.ModelBackend` that runs a DSPy program on one model.

Each :meth:`DSPyBackend.predict` awaits ``program.acall(**input)`` with the model set for that
call only (``dspy.context``, a contextvar; never ``dspy.configure``), so any number of
concurrent requests share one backend safely. Usage is exact per request (DSPy's shared
history is never read), cost comes from :mod:`llm_server.core.pricing`, and provider failures
leave as our own error types, whichever DSPy engine raised them. An answer DSPy cannot parse
leaves as its kind (unparseable, truncated, empty, refused; :mod:`._answers`), as does an
answer that parsed although a call of it was cut at ``max_tokens`` (truncated), is asked again
only as the parse policy says, and every call that came back is reported to the request's
observers with its usage, whatever became of the request.

It is the innermost layer of the model-call stack: requests get it inside the reliability
layers from :meth:`~llm_server.models.manager.ModelManager.reliable_backend`;
:meth:`~llm_server.models.manager.ModelManager.single_attempt_backend` builds it alone.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from llm_server._unicode import valid_text
from llm_server.core.errors import (
    InputError,
    LLMServerError,
    ModelTimeoutError,
    OutputParseError,
    RedactedCause,
    StreamInterruptedError,
)
from llm_server.core.model_config import ParsePolicy
from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.pricing import ModelPrice, cost_usd
from llm_server.core.streaming import StreamSink, current_sink
from llm_server.core.telemetry import redact
from llm_server.core.telemetry._observation import notify_model_output
from llm_server.models._answers import (
    AnswerAttempts,
    answer_error,
    cut_answer_error,
    is_parse_failure,
)
from llm_server.models._billed_calls import BilledCalls
from llm_server.models._errors import translate_error
from llm_server.models._usage import summarize_calls

if TYPE_CHECKING:
    from llm_server.models._request_scope import RequestScope

__all__ = ["DSPyBackend"]

logger = logging.getLogger(__name__)

_HISTORY_SIZE = 100
_NO_MAX_TOKENS = 1024  # DSPy's own default, when the backend was not told the model's


def _drop_frames(original: BaseException) -> None:
    """Let go of the frames a dependency's exception holds, once it was summarised.

    Its traceback holds every frame of the failed attempt (DSPy's, the HTTP client's, ours),
    and with them the request, the messages and the response; some of those frames hold the
    exception back (DSPy's error boundary, ``contextlib``), a reference cycle only the
    garbage collector's rare full collections free. In a fault storm that was ~60 MiB of
    attempts waiting for one. The original is never shown (``RedactedCause`` keeps its
    summary), so its chain's tracebacks are dropped and the frames go by reference counting.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [original]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        pending += (exc.__cause__, exc.__context__)


@dataclass(frozen=True, slots=True)
class _Rejected:
    """An attempt that failed: our error and what DSPy or the provider raised."""

    error: LLMServerError
    original: Exception


def _admit_all() -> bool:
    return True


_warned_sync_classes: set[type[Any]] = set()
_warned_lock = threading.Lock()


@functools.cache
def _request_scope() -> Callable[..., AbstractContextManager[RequestScope]]:
    # Imported lazily (it imports dspy) and once: an import statement per call is not free.
    from llm_server.models._request_scope import request_scope

    return request_scope


@functools.cache
def _run_listened() -> Callable[..., Awaitable[Any]]:
    from llm_server.models._listening import run_listened

    return run_listened


def _needs_worker_thread(program: Any) -> bool:
    """Whether some module in ``program`` lacks ``aforward`` (so ``acall`` would fail)."""
    named = getattr(program, "named_sub_modules", None)
    modules = [module for _, module in named()] if callable(named) else [program]
    return not all(callable(getattr(type(module), "aforward", None)) for module in modules)


def _streamable_fields(program: Any) -> tuple[str, ...]:
    """The string output fields a stream can carry: each predictor's, a name once."""
    named = getattr(program, "named_predictors", None)
    predictors = [p for _, p in named()] if callable(named) else []
    fields: list[str] = []
    counted: dict[str, int] = {}
    for predictor in predictors:
        signature = getattr(predictor, "signature", None)
        for name, field in getattr(signature, "output_fields", {}).items():
            counted[name] = counted.get(name, 0) + 1
            if field.annotation is str and name not in fields:
                fields.append(name)
    # A field two predictors produce cannot be told apart by a listener: not streamed.
    return tuple(name for name in fields if counted[name] == 1)


def _warn_sync_once(program: Any) -> None:
    cls = type(program)
    with _warned_lock:
        if cls in _warned_sync_classes:
            return
        _warned_sync_classes.add(cls)
    logger.warning(
        "program %s.%s has modules without aforward(); it runs in the framework's worker "
        "threads (LLM_SERVER_BLOCKING_WORKERS at a time) instead of on the event loop. "
        "Give every module an async aforward() to serve it concurrently.",
        cls.__module__,
        cls.__qualname__,
    )


def _call_metadata(calls: int, scope: Any) -> dict[str, Any]:
    """The output's metadata: LM calls made and, when it was timed (DSPy's native engine), the
    time they waited for a free connection of the model's pool."""
    metadata: dict[str, Any] = {"lm_calls": calls}
    if scope.connection_waits:
        metadata["connection_wait_ms"] = round(scope.connection_wait_s * 1000, 3)
    return metadata


class DSPyBackend:
    """Runs one DSPy program on one configured model.

    Attributes:
        model_id: The configured model id.
        model_name: ``provider/model`` of the model.
        program: The DSPy program (a ``dspy.Module``).
        program_metadata: The program block of the response envelope, if bound to a program.
        last_prompt_tokens: Prompt tokens of the most recent call (informational only: shared
            by concurrent requests; use ``ModelOutput.usage`` per request).
        last_completion_tokens: Completion tokens of the most recent call (same caveat).
    """

    def __init__(
        self,
        program: Any,
        *,
        model_id: str,
        lm: Any,
        model_name: str,
        price: ModelPrice | None,
        limiter: Callable[[], anyio.CapacityLimiter],
        program_metadata: Any = None,
        first_token_timeout_s: float | None = None,
        adapter: str | None = None,
        parse_policy: ParsePolicy | None = None,
        max_tokens: int | None = None,
        show_answers: bool = False,
        content_max_length: int = 500,
        admit: Callable[[], bool] | None = None,
    ) -> None:
        """Create the backend (use :meth:`ModelManager.single_attempt_backend` instead).

        Args:
            program: The DSPy program.
            model_id: The configured model id.
            lm: The model's ``dspy.LM``.
            model_name: ``provider/model`` (chooses the tokenizer for estimates).
            price: The model's price, or ``None`` when unknown (``cost_usd`` is then ``None``).
            limiter: Returns the limiter bounding worker threads for programs without
                ``aforward`` (called from async code).
            program_metadata: The envelope's program block, if any.
            first_token_timeout_s: In a streamed call, give up on an attempt whose first
                piece has not arrived after this many seconds (``ModelTimeoutError``).
            adapter: ``chat``, ``json`` or ``xml``: the DSPy adapter for this program on this
                model (``None``: the host's configured one, else ChatAdapter).
            parse_policy: What to do with an answer that cannot be parsed (default: report
                it at once, ask nothing more).
            max_tokens: The model's ``max_tokens`` (named in a truncation error, doubled by
                the policy's truncation re-ask).
            show_answers: Quote the model's raw answer in a parse error's message (only when
                message content capture is on).
            content_max_length: At most this many characters of it.
            admit: Whether the model's breaker would admit a call now; a re-ask is made
                only when it would.
        """
        self.model_id = model_id
        self.model_name = model_name
        self.program = program
        self.program_metadata = program_metadata
        self.last_prompt_tokens: int | None = None
        self.last_completion_tokens: int | None = None
        self._lm = lm
        self._price = price
        self._limiter = limiter
        self._sync = _needs_worker_thread(program)
        self._stream_fields = _streamable_fields(program)
        self._first_token_timeout_s = first_token_timeout_s
        self.adapter = adapter
        self._parse_policy = parse_policy or ParsePolicy()
        self._max_tokens = max_tokens
        self._show_answers = show_answers
        self._content_max_length = content_max_length
        self._admit = admit or _admit_all
        version = getattr(program_metadata, "version", None)
        self._program_version = version if isinstance(version, str) else None
        self._billed = BilledCalls(model_id, model_name, price, self._program_version)
        # Bounded, and without prompts or answers: content is captured only on opt-in elsewhere.
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=_HISTORY_SIZE)

    @property
    def lm(self) -> Any:
        """The ``dspy.LM`` this backend calls."""
        return self._lm

    async def predict(self, input: Mapping[str, Any]) -> ModelOutput:
        """Run the program once on ``input`` (its input fields by name).

        An answer that cannot be parsed is asked again only as the parse policy says (by
        default never); every call that came back is reported to the observers with its
        usage, whether the request then succeeds or fails.

        Returns:
            The prediction with this request's usage, cost, response model, finish reasons and
            latency (of the attempt that answered; rejected attempts were reported apart).

        Raises:
            InputError: ``input`` is not a mapping of input field names to values.
            ModelCallError: The provider failed (a subclass says how: rate limited, timeout,
                unavailable, auth, bad request, context window exceeded), or the answer was
                unusable (``OutputParseError`` and its kinds: truncated, empty, refused).
        """
        if not isinstance(input, Mapping):
            raise InputError(
                f"model {self.model_id!r}: expected a mapping of the program's input fields to "
                f"values, got {type(input).__name__}"
            )
        started = time.perf_counter()
        attempts: AnswerAttempts | None = None
        adapter, max_tokens = self.adapter, None
        request_scope = _request_scope()
        while True:
            # One attempt, inlined (not an awaited method): a frame less to resume on every
            # network wait. Its outcome: (prediction, scope), or a _Rejected.
            try:
                with request_scope(self._lm, adapter, max_tokens=max_tokens) as scope:
                    sink = current_sink()
                    if sink is not None and not self._sync:
                        prediction = await self._streamed(input, sink)
                    elif self._sync:
                        prediction = await self._call_in_thread(input)
                    else:
                        prediction = await self.program.acall(**input)
            except asyncio.CancelledError:
                self._cancelled(scope, started)
                raise
            except Exception as exc:
                rejected = self._failed_attempt(exc, scope, max_tokens, started)
                if rejected is None:
                    raise
                result: tuple[Any, RequestScope] | _Rejected = rejected
                rejected = None
            else:
                result = self._answered(prediction, scope, max_tokens, started)
            if not isinstance(result, _Rejected):
                prediction, scope = result
                break
            try:
                adapter, max_tokens, attempts = self._next_attempt(result, adapter, attempts)
            finally:  # the error raised holds this frame in its traceback: no cycle through it
                del result
        return self._succeeded(prediction, scope, started, attempts)

    def _next_attempt(
        self, result: _Rejected, adapter: str | None, attempts: AnswerAttempts | None
    ) -> tuple[str | None, int | None, AnswerAttempts | None]:
        """The adapter and ``max_tokens`` of the re-ask the parse policy allows after a
        rejected attempt; raises the attempt's error when there is none."""
        error, original = result.error, result.original
        retry = None
        if isinstance(error, OutputParseError):
            logger.warning(
                "answer rejected: %s: %s",
                error.error_type,
                error.message,
                extra={"error_type": error.error_type, "fields": list(error.fields)},
            )
            if attempts is None:
                attempts = AnswerAttempts(
                    self._parse_policy, adapter, self._max_tokens or _NO_MAX_TOKENS
                )
            retry = attempts.next(error)
            sink = current_sink()
            if retry is not None and ((sink is not None and sink.started) or not self._admit()):
                retry = None  # part of the answer is out, or the breaker would refuse
        if retry is None:
            # Raised here, outside an except block, so the original is not chained as
            # __context__; its redacted summary is the cause (see core.errors).
            cause = RedactedCause(original)
            if is_parse_failure(original) and not self._show_answers:
                # DSPy's message quotes the model's answer: kept only with content capture
                # (a span's exception event and a printed traceback show the cause).
                cause.args = (f"{cause.type_name}: the model's answer was not parsed",)
            elif logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s", redact("".join(traceback.format_exception(original))))
            _drop_frames(original)
            try:
                raise error from cause
            finally:  # this frame would hold the error its traceback holds: a cycle
                del error, original, cause, result
        _drop_frames(original)
        logger.warning(
            "model %r: asking again (%s) after a rejected answer: %s",
            self.model_id,
            retry.why,
            error.error_type,
            extra={"parse_retry": retry.why, "error_type": error.error_type},
        )
        return retry.adapter, retry.max_tokens, attempts

    def _cancelled(self, scope: RequestScope, started: float) -> None:
        """An attempt was cancelled: its calls in flight are billed as cut."""
        # A worker thread's call may end meanwhile: stock is taken once, under the lock.
        with scope.tracker.lock:
            scope.tracker.close()
            self._billed.cut(scope.cut_calls(), started)
            self._billed.failed(scope, started, "cancelled")

    def _failed_attempt(
        self, exc: Exception, scope: RequestScope, max_tokens: int | None, started: float
    ) -> _Rejected | None:
        """An attempt raised ``exc``: its billed calls reported, the error translated
        (``None``: raise ``exc`` itself)."""
        # Calls cancelled inside (a first-token timeout) left in flight: billed all the same.
        self._billed.cut(scope.cut_calls(), started)
        translated = self._translate(exc, scope, max_tokens)
        outcome = translated.error_type if translated is not None else "error"
        self._billed.failed(scope, started, outcome)
        self._log_dspy_warnings(scope)
        if translated is None or translated is exc:
            return None
        return _Rejected(translated, exc)

    def _answered(
        self, prediction: Any, scope: RequestScope, max_tokens: int | None, started: float
    ) -> tuple[Any, RequestScope] | _Rejected:
        """An attempt answered: the prediction, unless the answer was cut at max_tokens."""
        self._log_dspy_warnings(scope)
        cut = cut_answer_error(
            scope.entries, model_id=self.model_id, max_tokens=max_tokens or self._max_tokens
        )
        if cut is not None:  # parsed, but cut at max_tokens: incomplete, not served as whole
            self._billed.failed(scope, started, cut.error_type)
            return _Rejected(self._interrupted(cut) or cut, cut)
        return prediction, scope

    def _translate(
        self, exc: Exception, scope: RequestScope, max_tokens: int | None
    ) -> LLMServerError | None:
        if is_parse_failure(exc):
            translated: LLMServerError | None = answer_error(
                exc,
                scope.entries,
                model_id=self.model_id,
                max_tokens=max_tokens or self._max_tokens,
                show_answer=self._show_answers,
                content_max_length=self._content_max_length,
                streamed_refusal=scope.stream_refusals.get(len(scope.entries) - 1),
            )
        else:
            translated = translate_error(exc, model_id=self.model_id)
        if translated is None:
            translated = self._interrupted(None, redact(str(exc)))
        else:
            translated = self._interrupted(translated)
        return translated

    def _interrupted(
        self, error: LLMServerError | None, reason: str | None = None
    ) -> LLMServerError | None:
        """``error`` as a stream broken after its first piece, when part of the answer is out."""
        sink = current_sink()
        if sink is None or not sink.started:
            return error
        # Part of the answer is out: never retried, never handed to a fallback.
        return StreamInterruptedError(
            f"model {self.model_id!r}: the stream broke after its first piece: "
            f"{error.message if error is not None else reason}",
            model_id=self.model_id,
        )

    def _succeeded(
        self,
        prediction: Any,
        scope: RequestScope,
        started: float,
        attempts: AnswerAttempts | None,
    ) -> ModelOutput:
        latency_ms = (time.perf_counter() - started) * 1000
        _mend_lone_surrogates(prediction)
        summary = summarize_calls(scope.entries, scope.tracker.billed, model_name=self.model_name)
        usage = summary.usage
        metadata = _call_metadata(summary.calls, scope)
        if attempts is not None:
            metadata["answer_attempts"] = {**attempts.failures, "ok": 1}
        output = ModelOutput(
            content=prediction,
            model_id=self.model_id,
            usage=usage,
            cost_usd=cost_usd(usage, self._price),
            response_model=summary.response_model,
            finish_reasons=summary.finish_reasons,
            latency_ms=latency_ms,
            metadata=metadata,
        )
        if usage is not None:
            self.last_prompt_tokens = usage.input_tokens
            self.last_completion_tokens = usage.output_tokens
        self._history.append(
            {
                "model_id": self.model_id,
                "response_model": output.response_model,
                "usage": usage,
                "cost_usd": output.cost_usd,
                "finish_reasons": output.finish_reasons,
                "latency_ms": latency_ms,
                "timestamp": time.time(),
            }
        )
        notify_model_output(output)
        return output

    def _log_dspy_warnings(self, scope: RequestScope) -> None:
        """Log what DSPy warned about this attempt's calls, with the request's ids."""
        for warning in scope.dspy_warnings:
            logger.warning(
                "model %r: DSPy: %s", self.model_id, warning, extra={"dspy_warning": warning}
            )
        scope.dspy_warnings.clear()

    async def _streamed(self, input: Mapping[str, Any], sink: StreamSink) -> Any:
        """Run the program with its string fields' pieces going into ``sink``.

        DSPy's stream listeners, built per call, in the program's own task, on the loop
        (:mod:`llm_server.models._listening`). A cache hit streams nothing: the caller sends
        the fields whole. With ``first_token_timeout_s``, an attempt whose first piece has
        not arrived in time ends with :class:`ModelTimeoutError` (retried like any timeout:
        nothing was sent yet).
        """
        run_listened = _run_listened()
        limit = self._first_token_timeout_s
        if limit is None:  # no limit but the request deadline
            return await run_listened(self.program, input, self._stream_fields, sink)
        first_token = asyncio.timeout(limit)

        def started() -> None:
            first_token.reschedule(None)  # the rest may take its time

        try:
            async with first_token:
                return await run_listened(self.program, input, self._stream_fields, sink, started)
        except TimeoutError:
            if not first_token.expired():
                raise
            raise ModelTimeoutError(
                f"model {self.model_id!r}: no first token within first_token_timeout_s={limit:g}",
                model_id=self.model_id,
            ) from None

    async def _call_in_thread(self, input: Mapping[str, Any]) -> Any:
        _warn_sync_once(self.program)
        # anyio copies this context (dspy.context, the request scope) into the worker thread;
        # loop.run_in_executor would not. abandon_on_cancel lets a deadline end the wait; the
        # thread itself finishes within the model's timeout.
        call = functools.partial(self.program, **input)
        return await anyio.to_thread.run_sync(call, limiter=self._limiter(), abandon_on_cancel=True)

    def get_lm_history(self) -> list[Any]:
        """The last 100 calls of this backend: model, usage, cost, finish reasons, latency.

        Prompts and answers are not kept (DSPy's own history is turned off: it grows without
        bound and mixes concurrent requests).
        """
        return list(self._history)


def _mended(value: Any) -> Any:
    if type(value) is str:
        return valid_text(value)
    if type(value) is list:
        items = [_mended(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if type(value) is dict:
        mended = {key: _mended(item) for key, item in value.items()}
        return value if all(mended[k] is v for k, v in value.items()) else mended
    return value


def _mend_lone_surrogates(prediction: Any) -> None:
    """Mend the output fields of a garbled answer in place: a model that writes a JSON escape
    of half an emoji (``"\\ud83d"``) gets a field DSPy parses into a string no response, store
    or log can encode (a 500 for the whole request); U+FFFD stands in for the lost half."""
    keys = getattr(prediction, "keys", None)
    if not callable(keys):
        return
    for key in list(keys()):
        value = prediction[key]
        mended = _mended(value)
        if mended is not value:
            prediction[key] = mended
