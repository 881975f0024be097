"""Telemetry, the instrumented backend and the trace-id helpers (private: public at
:mod:`llm_server.core.opentelemetry_integration`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import metrics, trace

from llm_server import __version__
from llm_server.core._ids import random_hex128
from llm_server.core.config import FrameworkSettings
from llm_server.core.model_interfaces import ModelOutput, TokenCountMethod
from llm_server.core.protocols import ModelBackend
from llm_server.core.reliability._wrapper import BackendWrapper
from llm_server.core.telemetry._listeners import RecordingListener, TelemetryListener
from llm_server.core.telemetry._logging import _fallback_trace_id
from llm_server.core.telemetry._model_call import ModelCallInfo, ModelCallRecorder
from llm_server.core.telemetry._observation import StepTiming, pop_observer, push_observer
from llm_server.core.telemetry._signals import NoopSignals, OtelSignals, guarded

__all__ = ["InstrumentedBackend", "Telemetry", "current_trace_id", "get_telemetry", "set_telemetry"]

_NOOP_SIGNALS = NoopSignals()
_NOOP_LISTENER = TelemetryListener()


class Telemetry:
    """The library's handle on OpenTelemetry, built once at startup from the settings.

    Args:
        settings: ``otel_enabled`` switches everything on or off; ``telemetry_detail``
            chooses ``genai`` (the GenAI conventions' model-call span and metrics, cost, errors
            and refusals) or ``full`` (also pipeline and step spans and durations, the legacy
            ``llm.*`` attributes, calls in flight and the wait for a connection);
            ``otel_capture_message_content``, ``otel_content_max_length`` and
            ``otel_llm_attributes`` shape the model-call spans.
        tracer_provider: Where spans go (default: the global provider).
        meter_provider: Where metrics go (default: the global provider).
    """

    __slots__ = ("_listener", "_signals")

    def __init__(
        self,
        settings: FrameworkSettings,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._signals: OtelSignals | NoopSignals = _NOOP_SIGNALS
        self._listener: TelemetryListener = _NOOP_LISTENER
        if settings.otel_enabled:
            signals = OtelSignals(
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                version=__version__,
                capture_content=settings.otel_capture_message_content,
                content_max_length=settings.otel_content_max_length,
                llm_attributes=(
                    settings.otel_llm_attributes
                    if settings.otel_llm_attributes is not None
                    else settings.telemetry_detail == "full"
                ),
                full=settings.telemetry_detail == "full",
            )
            self._signals = signals
            self._listener = RecordingListener(signals)

    @classmethod
    def disabled(cls) -> Telemetry:
        """A telemetry that emits nothing (the default until :func:`set_telemetry`)."""
        return cls(FrameworkSettings.model_construct(otel_enabled=False))

    @property
    def enabled(self) -> bool:
        """Whether anything is emitted."""
        return self._signals.enabled

    def instrument(
        self, backend: ModelBackend, call_info: ModelCallInfo | None = None
    ) -> InstrumentedBackend:
        """Wrap ``backend`` so each call gets a span and metrics (:class:`InstrumentedBackend`)."""
        return InstrumentedBackend(backend, telemetry=self, call_info=call_info)

    def request_span(
        self, name: str = "request", *, attributes: Mapping[str, Any] | None = None
    ) -> AbstractContextManager[None]:
        """A ``with`` block traced as one incoming request: a ``SERVER`` span, unless one is active.

        Everything inside (pipelines, model calls, :func:`current_trace_id`, log lines) then
        shares one trace. When the host already traces requests (FastAPI's own instrumentation
        once an SDK is configured, or OpenTelemetry's ASGI middleware), its span stays the
        parent of everything inside and no second span is opened.

        Args:
            name: The span name, e.g. ``"POST /predict"`` (a route, never a raw URL).
            attributes: Low-cardinality attributes for the span.
        """
        return self._signals.request_scope(name, attributes)

    def pipeline_span(self, pipeline: str) -> AbstractContextManager[None]:
        """A ``with`` block timed as one execution of ``pipeline`` (span and histogram)."""
        return self._signals.pipeline_scope(pipeline)

    def step_span(self, pipeline: str, step: str, index: int) -> AbstractContextManager[None]:
        """A ``with`` block timed as one run of a pipeline step (child span and histogram)."""
        return self._signals.step_scope(pipeline, step, index)

    @property
    def listener(self) -> TelemetryListener:
        """The breaker listener and request observer that records into these signals."""
        return self._listener

    async def watch_event_loop(self, *, interval_s: float = 0.5) -> None:
        """Record how late the event loop runs a timer, every ``interval_s``, until cancelled.

        The lag is the time every ready task waits for the loop (a busy worker, a blocking
        call): recorded in the ``llm_server.event_loop.lag`` histogram. Run it as a task in
        the host's lifespan (:func:`llm_server.fastapi.llm_server_lifespan` does when
        telemetry is on); with telemetry off it returns at once.
        """
        signals = self._signals
        if not isinstance(signals, OtelSignals):
            return
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            try:
                signals.loop_lag.record(max(0.0, loop.time() - expected))
            except Exception as exc:
                guarded("record event loop lag", exc)

    def observe_breakers(self, breakers: Iterable[Any] | Mapping[str, Any]) -> None:
        """Report these circuit breakers' states in ``llm_server.circuit_breaker.state``.

        Args:
            breakers: Breakers (or a mapping whose values are breakers), each with a ``name``
                and a ``state`` (an enum or string such as ``"half_open"``). The gauge reads
                them at each collection; registering a breaker twice is harmless.
        """
        values = breakers.values() if isinstance(breakers, Mapping) else breakers
        self._signals.observe_breakers(list(values))

    def observe_limits(
        self, limiters: Iterable[Any], fleet: Any = None, budgets: Any = None
    ) -> None:
        """Report rate-limit refusals in ``llm_server.rate_limit.refusals``, budget refusals
        in ``llm_server.budget.refusals`` and, given a :class:`~llm_server.fleet.Fleet`, its
        fallback mode in ``llm_server.fleet.fallback``."""
        self._signals.observe_limits(list(limiters), fleet, budgets)

    def observe_caches(self, caches: Iterable[Any]) -> None:
        """Report shared-cache hits and misses in ``llm_server.cache.requests`` (``hit``)."""
        self._signals.observe_caches(list(caches))

    def __repr__(self) -> str:
        return f"Telemetry(enabled={self.enabled})"


class InstrumentedBackend(BackendWrapper):
    """A :class:`~llm_server.core.protocols.ModelBackend` that traces and meters each call.

    Each :meth:`predict` runs in a ``CLIENT`` span following the GenAI semantic conventions and
    records ``gen_ai.client.operation.duration``, ``gen_ai.client.token.usage`` and the cost
    counter. For the duration of the call it attaches the telemetry's
    :class:`~llm_server.core.opentelemetry_integration.TelemetryListener` as a request observer,
    so retries, fallbacks and breaker refusals inside become events of the span. With disabled
    telemetry it forwards straight to the wrapped backend.

    Wrap it *around* the reliability wrappers to get one span per logical call with retry,
    breaker and fallback events inside, or *inside* them to get one span per attempt.

    Args:
        backend: The backend to observe.
        telemetry: Where the signals go.
        call_info: Provider, request model, endpoint and request options for the span
            attributes; when omitted they are guessed from ``backend.model_id``.
    """

    def __init__(
        self,
        backend: ModelBackend,
        *,
        telemetry: Telemetry,
        call_info: ModelCallInfo | None = None,
    ) -> None:
        super().__init__(backend)
        signals = telemetry._signals
        self._observer: _CallObserver | None = None
        if isinstance(signals, OtelSignals):
            info = call_info or ModelCallInfo.from_model_name(backend.model_id)
            recorder = ModelCallRecorder(signals, info, backend.model_id)
            self._observer = _CallObserver(telemetry.listener, recorder)

    async def predict(self, input: Any) -> ModelOutput:
        """Call the wrapped backend inside the model-call span."""
        observer = self._observer
        if observer is None:  # disabled telemetry: decided once, at construction
            return await self._backend.predict(input)
        recorder = observer.recorder
        call = recorder.start(input)
        # Retries, fallbacks and refusals inside this call become events of its span, and
        # calls cut after they were sent are recorded.
        token = push_observer(observer)
        try:
            output = await self._backend.predict(input)
        except BaseException as exc:
            recorder.failed(call, exc)
            raise
        finally:
            pop_observer(token)
        recorder.succeeded(call, output)
        return output


class _CallObserver:
    """What an instrumented call attaches for its duration: the telemetry's listener for
    retries, fallbacks and refusals, and its own recorder for calls cut after they left."""

    __slots__ = ("_listener", "recorder")

    def __init__(self, listener: TelemetryListener, recorder: ModelCallRecorder) -> None:
        self._listener = listener
        self.recorder = recorder

    def on_step(self, timing: StepTiming) -> None:
        """Steps have spans of their own."""

    def on_model_output(self, output: ModelOutput) -> None:
        """Record a cut call, or the billed calls of a failed attempt (a call that answered
        is recorded when the span closes)."""
        usage = output.usage
        if usage is not None and usage.method is TokenCountMethod.CUT_ESTIMATE:
            self.recorder.cut(output)
        elif "outcome" in output.metadata:
            self.recorder.rejected(output)

    def on_retry(self, model_id: str, attempt: int, error: BaseException, delay_s: float) -> None:
        """A retry: an event of the call's span."""
        self._listener.on_retry(model_id, attempt, error, delay_s)

    def on_fallback(self, from_model_id: str, to_model_id: str, error: BaseException) -> None:
        """A fallback: an event of the call's span."""
        self._listener.on_fallback(from_model_id, to_model_id, error)

    def on_breaker_refusal(self, model_id: str, retry_after_s: float) -> None:
        """A refusal inside the call: an event of its span."""
        self._listener.on_breaker_refusal(model_id, retry_after_s)


def current_trace_id() -> str:
    """The current trace id as 32 lowercase hex digits, for the envelope's ``trace_id``.

    With an active span (ours, or the host's, e.g. from FastAPI instrumentation) this is its
    trace id, so a response links to its trace. Without one it is the random id fixed for the
    enclosing :func:`~llm_server.core.telemetry.log_context` (the same one the JSON logs carry),
    or, outside any ``log_context``, a fresh random id on every call.
    """
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return format(context.trace_id, "032x")
    return _fallback_trace_id() or random_hex128()


_current: Telemetry = Telemetry.disabled()


def get_telemetry() -> Telemetry:
    """The process-wide telemetry used by pipelines that were not given one."""
    return _current


def set_telemetry(telemetry: Telemetry | None) -> None:
    """Set the process-wide telemetry (``None`` restores the disabled default).

    Call it once at startup, after the host has configured its OpenTelemetry SDK.
    """
    global _current  # noqa: PLW0603 -- one process-wide default, like OpenTelemetry's own
    _current = telemetry if telemetry is not None else Telemetry.disabled()
