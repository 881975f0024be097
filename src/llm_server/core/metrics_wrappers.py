"""Per-request performance metrics: checkpoints, token usage and cost.

``PerformanceMetrics`` is a :class:`~llm_server.core.telemetry.RequestObserver` that attaches
itself, when created, to the current context: every model call made later in the same request
reports its output to it, so the classic example app's summary holds the call's exact tokens and
cost although the metrics object is never passed to the pipeline. Each ASGI request runs in its own
task with its own copy of the context, so concurrent requests never see each other's calls.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from llm_server.core._ids import random_hex128
from llm_server.core.model_interfaces import ModelOutput, TokenCountMethod, TokenUsage
from llm_server.core.protocols import ModelBackend
from llm_server.core.reliability._wrapper import BackendWrapper
from llm_server.core.telemetry._observation import StepTiming, attach_observer, observing

__all__ = ["ModelBackendTracker", "PerformanceMetrics"]

_ANSWER_KINDS: Final = frozenset(
    {"unparseable_output", "output_truncated", "empty_output", "model_refused"}
)
_BILLED: Final = frozenset(
    {TokenCountMethod.EXACT, TokenCountMethod.ESTIMATE, TokenCountMethod.CUT_ESTIMATE}
)


@functools.cache
def _trace_sources() -> tuple[Callable[[], Any], Callable[[], str | None]]:
    # Imported lazily (OpenTelemetry is not needed to import this module) and once: an
    # import statement on every request is not free.
    from opentelemetry import trace

    from llm_server.core.telemetry._logging import _fallback_trace_id as log_context_trace_id

    return trace.get_current_span, log_context_trace_id


def _active_trace_id() -> str | None:
    """The trace id of the active span, if one is recording."""
    try:
        context = _trace_sources()[0]().get_span_context()
    except Exception:  # telemetry never breaks a request
        return None
    return format(context.trace_id, "032x") if context.is_valid else None


def _fallback_trace_id() -> str:
    # What current_trace_id() returns when no span is active (already looked up): the
    # enclosing log_context's random id, else a fresh one.
    try:
        return _trace_sources()[1]() or random_hex128()
    except Exception:  # telemetry never breaks a request
        return random_hex128()


class PerformanceMetrics:
    """Timing, tokens and cost of one request, gathered as a request observer.

    Create one at the start of a request handler. ``mark_checkpoint(name)`` records the time
    since creation as ``<name>_ms``; a ``model_complete`` checkpoint is marked automatically
    when a model call finishes. ``get_summary()`` returns the envelope's ``performance`` block.

    Args:
        attach: Attach to the current context so model calls report here (default ``True``).
            A newer ``PerformanceMetrics`` attached in the same context replaces this one, so
            a task that handles requests in a loop never accumulates them.
    """

    def __init__(self, *, attach: bool = True) -> None:
        self._started = time.perf_counter()
        self._checkpoints: dict[str, float] = {}
        self._steps: list[StepTiming] = []
        self._outputs: list[ModelOutput] = []
        self._fallback: tuple[tuple[str, ...], str] | None = None
        self._falling_back: tuple[list[str], str] | None = None  # (tried, trying now)
        self._lock = threading.Lock()
        active = _active_trace_id()
        self._trace_from_span = active is not None
        self.trace_id = active or _fallback_trace_id()
        if attach:
            # A new metrics object starts a new request in this context: the previous one
            # (if this task handles requests in a loop) stops receiving events.
            attach_observer(self, replace_same_type=True)

    @property
    def model_calls(self) -> int:
        """How many model calls reported to this object."""
        return len(self._outputs)

    @property
    def model_outputs(self) -> tuple[ModelOutput, ...]:
        """The outputs of the model calls that reported here, in order."""
        return tuple(self._outputs)

    @property
    def steps(self) -> tuple[StepTiming, ...]:
        """The pipeline step timings that reported here, in order."""
        return tuple(self._steps)

    def elapsed_ms(self) -> float:
        """Milliseconds since this object was created."""
        return (time.perf_counter() - self._started) * 1000.0

    def mark_checkpoint(self, name: str) -> float:
        """Record the time since creation as ``<name>_ms`` and return it."""
        elapsed = round(self.elapsed_ms(), 2)
        with self._lock:
            self._checkpoints[name] = elapsed
        return elapsed

    def _adopt_trace(self) -> None:
        # Created outside any span (e.g. no request span), the first pipeline or model span
        # then opened a trace: adopt it, so the envelope's trace_id links to that trace.
        if not self._trace_from_span:
            active = _active_trace_id()
            if active is not None:
                self.trace_id, self._trace_from_span = active, True

    def on_step(self, timing: StepTiming) -> None:
        """Observer hook: a pipeline step finished."""
        self._adopt_trace()
        with self._lock:
            self._steps.append(timing)

    def on_model_output(self, output: ModelOutput) -> None:
        """Observer hook: a model call finished (each output is counted once)."""
        self._adopt_trace()
        with self._lock:  # one acquisition: this runs on every model call
            for seen in self._outputs:
                if seen is output:
                    return
            self._outputs.append(output)
            if "outcome" in output.metadata:  # a failed attempt's billed calls: counted only
                return
            self._checkpoints["model_complete"] = round(self.elapsed_ms(), 2)
            falling_back = self._falling_back
            if falling_back is not None and falling_back[1] == output.model_id:
                self._fallback = (tuple(falling_back[0]), output.model_id)
                self._falling_back = None

    def on_retry(self, model_id: str, attempt: int, error: BaseException, delay_s: float) -> None:
        """Observer hook: a retry (counted in the output's ``attempts``; nothing to do)."""

    def on_fallback(self, from_model_id: str, to_model_id: str, error: BaseException) -> None:
        """Observer hook: the call moves on to a fallback model (shown once one answers)."""
        with self._lock:
            tried = self._falling_back[0] if self._falling_back is not None else []
            self._falling_back = ([*tried, from_model_id], to_model_id)

    def on_breaker_refusal(self, model_id: str, retry_after_s: float) -> None:
        """Observer hook: a breaker refused a call (the error or a fallback tells the rest)."""

    def usage(self) -> TokenUsage | None:
        """Sum of the usage of every model call, or ``None`` when none reported any."""
        usages = [o.usage for o in self._outputs if o.usage is not None]
        if not usages:
            return None
        total = usages[0]
        for usage in usages[1:]:
            total = total + usage
        return total

    def cost_usd(self) -> float | None:
        """Sum of the costs, or ``None`` if any call's price is unknown (never a guess)."""
        if not self._outputs or any(o.cost_usd is None for o in self._outputs):
            return None
        return sum(o.cost_usd or 0.0 for o in self._outputs)

    def answer_attempts(self) -> dict[str, int]:
        """Attempts whose answer was rejected, by kind (``unparseable_output``,
        ``output_truncated``, ...), plus ``ok`` when one of them was then answered; empty
        when every answer was used at once."""
        counts: dict[str, int] = {}
        with self._lock:
            for output in self._outputs:
                outcome = output.metadata.get("outcome")
                if outcome is None and "answer_attempts" in output.metadata:
                    counts["ok"] = counts.get("ok", 0) + 1  # answered after re-asks
                elif isinstance(outcome, str) and outcome in _ANSWER_KINDS:
                    counts[outcome] = counts.get(outcome, 0) + 1
        if set(counts) == {"ok"}:
            return {}
        return counts

    def billed_usage(self) -> dict[str, Any] | None:
        """What the request was billed so far, for an error envelope's ``usage``.

        ``input``, ``output``, ``total``, ``cost_usd`` and ``method`` summed over every call
        that came back (failed attempts included; calls cut in flight are estimated), and
        ``calls``: one item per reported output with its ``model_id``, tokens, cost and
        ``outcome`` (an error type, or ``ok``). ``None`` when nothing was billed.
        """
        with self._lock:
            outputs = [o for o in self._outputs if o.usage is not None]
        billed = [o for o in outputs if o.usage is not None and o.usage.method in _BILLED]
        if not billed:
            return None
        usage = self.usage()
        assert usage is not None
        cost = self.cost_usd()
        calls = []
        for output in billed:
            item = output.usage
            assert item is not None
            outcome = output.metadata.get("outcome")
            if output.metadata.get("cut"):
                outcome = "cut"
            calls.append(
                {
                    "model_id": output.model_id,
                    "input": item.input_tokens,
                    "output": item.output_tokens,
                    "total": item.total_tokens,
                    "cost_usd": round(output.cost_usd, 10) if output.cost_usd is not None else None,
                    "method": str(item.method),
                    "outcome": outcome if isinstance(outcome, str) else "ok",
                    "lm_calls": output.metadata.get("lm_calls", 1),
                }
            )
        block: dict[str, Any] = {
            "input": usage.input_tokens,
            "output": usage.output_tokens,
            "total": usage.total_tokens,
            "cost_usd": round(cost, 10) if cost is not None else None,
            "method": str(usage.method),
            "calls": calls,
        }
        attempts = self.answer_attempts()
        if attempts:
            block["answer_attempts"] = attempts
        return block

    def get_summary(self) -> dict[str, Any]:
        """The envelope's ``performance`` block.

        ``timing`` holds ``total_ms``, one ``<checkpoint>_ms`` per checkpoint and, when the
        model calls measured it, ``connection_wait_ms`` (their wait for a free connection of
        the model's pool, ``max_connections``); ``tokens``
        holds ``input``, ``output``, ``total``, ``cost_usd`` and ``method`` (``None`` counts
        and method ``"unavailable"`` when no call reported usage); ``trace_id`` links to the
        request's trace when tracing is on.
        """
        timing: dict[str, float] = {"total_ms": round(self.elapsed_ms(), 2)}
        with self._lock:
            timing.update({f"{name}_ms": value for name, value in self._checkpoints.items()})
            waits = [
                waited
                for o in self._outputs
                if isinstance(waited := o.metadata.get("connection_wait_ms"), int | float)
            ]
        if waits:  # measured (DSPy's native engine): the calls' wait for a free connection
            timing["connection_wait_ms"] = round(sum(waits), 3)
        usage = self.usage()
        cost = self.cost_usd()
        tokens: dict[str, Any] = {
            "input": usage.input_tokens if usage else None,
            "output": usage.output_tokens if usage else None,
            "total": usage.total_tokens if usage else None,
            "cost_usd": round(cost, 10) if cost is not None else None,
            "method": str(usage.method if usage else TokenCountMethod.UNAVAILABLE),
        }
        summary: dict[str, Any] = {"timing": timing, "tokens": tokens, "trace_id": self.trace_id}
        attempts = self.answer_attempts()
        if attempts:
            summary["answer_attempts"] = attempts
        if self._fallback is not None:
            tried, answered_by = self._fallback
            summary["fallback"] = {"answered_by": answered_by, "tried": list(tried)}
        return summary


class ModelBackendTracker(BackendWrapper):
    """Wraps a backend so that its calls report to ``metrics``.

    Backends built by the framework already report to the metrics of the current request;
    wrapping them is harmless (each call is counted once). Wrap custom backends that do not
    report by themselves.
    """

    def __init__(self, backend: ModelBackend, metrics: PerformanceMetrics) -> None:
        super().__init__(backend)
        self.backend = backend
        self.metrics = metrics

    async def predict(self, input: Any) -> ModelOutput:
        """Call the backend; report its output unless the backend already did."""
        before = self.metrics.model_calls
        with observing(self.metrics):
            output = await self._backend.predict(input)
        if self.metrics.model_calls == before:
            self.metrics.on_model_output(output)
        return output
