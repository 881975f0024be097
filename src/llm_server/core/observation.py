"""Per-request observation of pipeline steps and model calls, carried in a contextvar.

The reference example creates a ``PerformanceMetrics`` before running a pipeline and never
passes it in, yet its summary holds the model call's tokens. That works through this module:
an observer attached with :func:`attach_observer` receives every step timing and model output
produced later *in the same context*. asyncio copies the context into each task, so two
concurrent requests (each in its own task, as in any ASGI server) never see each other's
events, while tasks spawned inside one request (``asyncio.gather``) report to that request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from llm_server.core.model_interfaces import ModelOutput

__all__ = [
    "ExecutionObserver",
    "StepTiming",
    "attach_observer",
    "notify_fallback",
    "notify_model_output",
    "notify_step",
    "observing",
]


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
class ExecutionObserver(Protocol):
    """Receives what happens during one request."""

    def on_step(self, timing: StepTiming) -> None:
        """Called after each pipeline step."""
        ...

    def on_model_output(self, output: ModelOutput) -> None:
        """Called after each successful model call.

        An observer may also define ``on_fallback(tried, answered_by)``: it is then told when
        a fallback model answered after the models in ``tried`` failed or were refused.
        """
        ...


_observers: ContextVar[tuple[ExecutionObserver, ...]] = ContextVar(
    "llm_server_observers", default=()
)


def attach_observer(observer: ExecutionObserver, *, replace_same_type: bool = False) -> None:
    """Attach ``observer`` to the current context for the rest of it (e.g. one request).

    Args:
        observer: The observer.
        replace_same_type: Detach observers of the same class first. Per-request observers
            use it, so that a loop handling many requests in one task keeps only the newest
            one instead of accumulating them.
    """
    current = _observers.get()
    if any(o is observer for o in current):
        return
    if replace_same_type:
        current = tuple(o for o in current if type(o) is not type(observer))
    _observers.set((*current, observer))


@contextmanager
def observing(observer: ExecutionObserver) -> Iterator[ExecutionObserver]:
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


def notify_step(timing: StepTiming) -> None:
    """Send a step timing to the observers of the current context."""
    for observer in _observers.get():
        observer.on_step(timing)


def notify_model_output(output: ModelOutput) -> None:
    """Send a model output to the observers of the current context."""
    for observer in _observers.get():
        observer.on_model_output(output)


def notify_fallback(tried: tuple[str, ...], answered_by: str) -> None:
    """Tell the observers that ``answered_by`` answered after the models in ``tried`` failed."""
    for observer in _observers.get():
        on_fallback = getattr(observer, "on_fallback", None)
        if on_fallback is not None:
            on_fallback(tried, answered_by)
