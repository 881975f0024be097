"""Per-request observation of pipeline steps and model calls, carried in a contextvar.

The classic example app creates a ``PerformanceMetrics`` before running a pipeline and never
passes it in, yet its summary holds the model call's tokens. That works through this module:
an observer attached with :func:`attach_observer` receives every step timing and model output
produced later *in the same context*. asyncio copies the context into each task, so two
concurrent requests (each in its own task, as in any ASGI server) never see each other's
events, while tasks spawned inside one request (``asyncio.gather``) report to that request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from llm_server.core.model_interfaces import ModelOutput

__all__ = [
    "RequestObserver",
    "StepTiming",
    "attach_observer",
    "notify_breaker_refusal",
    "notify_fallback",
    "notify_model_output",
    "notify_retry",
    "notify_step",
    "observing",
    "pop_observer",
    "push_observer",
]

_log = logging.getLogger("llm_server.observation")


@dataclass(frozen=True, slots=True)
class StepTiming:
    """How long one pipeline step took.

    Attributes:
        pipeline: The pipeline's name.
        step: The step's name.
        index: The step's position in the pipeline (0-based).
        duration_ms: Wall time of ``process``.
        outcome: ``"ok"`` or ``"error"``.
    """

    pipeline: str
    step: str
    index: int
    duration_ms: float
    outcome: Literal["ok", "error"]


@runtime_checkable
class RequestObserver(Protocol):
    """Receives what happens during one request: the one observer protocol of the library.

    Every hook has one signature and a no-op body, so a subclass writes only the hooks it
    needs. An exception raised by a hook is logged (logger ``llm_server.observation``) and
    swallowed: an observer never fails a call. Attach one with :func:`attach_observer` (for
    the rest of the current context, e.g. one request) or :func:`observing` (for a block).
    :class:`~llm_server.core.metrics_wrappers.PerformanceMetrics` and the OpenTelemetry
    :class:`~llm_server.core.opentelemetry_integration.TelemetryListener` are observers.
    """

    def on_step(self, timing: StepTiming) -> None:
        """A pipeline step finished."""

    def on_model_output(self, output: ModelOutput) -> None:
        """A model call (one model, after its retries) answered with ``output``.

        Billed calls that did not answer come here too, so every billed token is seen once:
        an attempt that failed after its calls came back (an unparseable answer, an attempt
        before a retry) as an output without content whose ``metadata["outcome"]`` is the
        error type, and a call cut in flight with ``TokenCountMethod.CUT_ESTIMATE`` usage.
        """

    def on_retry(self, model_id: str, attempt: int, error: BaseException, delay_s: float) -> None:
        """Attempt ``attempt`` (1-based) to ``model_id`` failed; the next starts in ``delay_s``."""

    def on_fallback(self, from_model_id: str, to_model_id: str, error: BaseException) -> None:
        """``from_model_id`` failed or was refused with ``error``; ``to_model_id`` is tried next."""

    def on_breaker_refusal(self, model_id: str, retry_after_s: float) -> None:
        """``model_id``'s circuit breaker refused a call; it lets a probe through in
        ``retry_after_s`` seconds."""


_observers: ContextVar[tuple[RequestObserver, ...]] = ContextVar("llm_server_observers", default=())


def attach_observer(observer: RequestObserver, *, replace_same_type: bool = False) -> None:
    """Attach ``observer`` to the current context for the rest of it (e.g. one request).

    Args:
        observer: The observer.
        replace_same_type: Detach observers of the same class first. Per-request observers
            use it, so that a loop handling many requests in one task keeps only the newest
            one instead of accumulating them.
    """
    current = _observers.get()
    if not current:  # the usual case (a request's first observer): ~1.5 us less per request
        _observers.set((observer,))
        return
    if any(o is observer for o in current):
        return
    if replace_same_type:
        current = tuple(o for o in current if type(o) is not type(observer))
    _observers.set((*current, observer))


@contextmanager
def observing(observer: RequestObserver) -> Iterator[RequestObserver]:
    """Attach ``observer`` for the duration of a ``with`` block (no-op if already attached)."""
    current = _observers.get()
    if any(o is observer for o in current):
        yield observer
        return
    token = _observers.set((*current, observer))
    try:
        yield observer
    finally:
        _observers.reset(token)


def push_observer(observer: RequestObserver) -> Token[tuple[RequestObserver, ...]]:
    """Attach ``observer`` until :func:`pop_observer` is given the returned token (hot paths)."""
    return _observers.set((*_observers.get(), observer))


def pop_observer(token: Token[tuple[RequestObserver, ...]]) -> None:
    """Undo the :func:`push_observer` that returned ``token``."""
    _observers.reset(token)


def _failed(observer: RequestObserver, hook: str) -> None:
    _log.exception("request observer %s.%s failed", type(observer).__name__, hook)


def notify_step(timing: StepTiming) -> None:
    """Send a step timing to the observers of the current context."""
    for observer in _observers.get():
        try:
            observer.on_step(timing)
        except Exception:
            _failed(observer, "on_step")


def notify_model_output(output: ModelOutput) -> None:
    """Send a model output to the observers of the current context."""
    for observer in _observers.get():
        try:
            observer.on_model_output(output)
        except Exception:
            _failed(observer, "on_model_output")


def notify_retry(model_id: str, attempt: int, error: BaseException, delay_s: float) -> None:
    """Tell the observers that attempt ``attempt`` to ``model_id`` failed and is retried."""
    for observer in _observers.get():
        try:
            observer.on_retry(model_id, attempt, error, delay_s)
        except Exception:
            _failed(observer, "on_retry")


def notify_fallback(from_model_id: str, to_model_id: str, error: BaseException) -> None:
    """Tell the observers that the call moves from ``from_model_id`` to ``to_model_id``."""
    for observer in _observers.get():
        try:
            observer.on_fallback(from_model_id, to_model_id, error)
        except Exception:
            _failed(observer, "on_fallback")


def notify_breaker_refusal(model_id: str, retry_after_s: float) -> None:
    """Tell the observers that ``model_id``'s breaker refused a call."""
    for observer in _observers.get():
        try:
            observer.on_breaker_refusal(model_id, retry_after_s)
        except Exception:
            _failed(observer, "on_breaker_refusal")
